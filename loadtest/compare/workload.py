"""What the comparison sends: its rows (where requests go, what they ask CROP for) and their
bodies, over one image size, with the model's own token accounting."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from crop_vllm.layout import CropMode, Region
from loadtest.common import QUARTER, QUESTIONS, image_chat, jpeg_url
from server.accounting import ModelGeometry


@dataclass(frozen=True)
class Config:
    """One row of the comparison: where requests go and what they ask CROP for."""

    name: str
    target: str  # "stock" (stock vLLM directly) or "gateway" (in front of CROP's vLLM)
    mode: str | None = None  # the gateway's crop.mode
    client_region: bool = False
    downscale: bool = False

    @property
    def localized(self) -> bool:
        """The region comes from the localizer (its cost is in the row): reported apart."""
        return self.target == "gateway" and self.mode != "off" and not self.client_region


CONFIGS = (
    Config("stock vLLM", "stock"),
    Config("CROP off", "gateway", "off"),
    Config("PLC", "gateway", "plc", client_region=True),
    Config("ILP", "gateway", "ilp", client_region=True),
    Config("PLC+ILP", "gateway", "plc+ilp", client_region=True),
    Config("downscale", "stock", downscale=True),
    Config("PLC (localizer)", "gateway", "plc"),
    Config("PLC+ILP (localizer)", "gateway", "plc+ilp"),
)


@dataclass(frozen=True)
class Downscale:
    """The image shrunk to PLC's visual-token budget (what users do today)."""

    width: int
    height: int
    visual_tokens: int
    budget: int


class Workload:
    """Square `size` images with a quarter region, `max_tokens` output tokens each."""

    def __init__(self, geometry: ModelGeometry, size: int, max_tokens: int) -> None:
        self.geometry, self.size, self.max_tokens = geometry, size, max_tokens

    @cached_property
    def full_visual_tokens(self) -> int:
        """Visual tokens of an unpruned image (what stock vLLM prefills)."""
        return self.geometry.image_tokens(self.size, self.size, None, CropMode.OFF).full

    @cached_property
    def downscale(self) -> Downscale | None:
        """The largest size with the image's aspect whose visual tokens are at most what PLC
        keeps of the quarter region; None for models that resize every image to one grid
        (shrinking saves nothing there)."""
        region = Region(*QUARTER)
        budget = self.geometry.image_tokens(self.size, self.size, region, CropMode.PLC).after_plc
        for side in range(self.size, 0, -1):
            tokens = self.geometry.image_tokens(side, side, None, CropMode.OFF).full
            if tokens <= budget:
                return Downscale(side, side, tokens, budget) if side < self.size else None
        return None

    def body(self, config: Config, seed: int) -> dict[str, Any]:
        """A fresh image (per seed) and question, as `config` sends them."""
        down = self.downscale if config.downscale else None
        width, height = (down.width, down.height) if down else (self.size, self.size)
        question = QUESTIONS[seed % len(QUESTIONS)]
        body = image_chat(jpeg_url(seed, width, height), question, self.max_tokens)
        if config.target == "gateway":
            body["crop"] = {"mode": config.mode}
            if config.client_region:
                body["crop"]["regions"] = [QUARTER]
        return body

    def visual_tokens(self, config: Config) -> int:
        """What a stock row prefills (its answers carry no `usage.crop`)."""
        down = self.downscale if config.downscale else None
        return down.visual_tokens if down else self.full_visual_tokens
