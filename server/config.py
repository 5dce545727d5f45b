"""The gateway's settings, validated once at startup (the CLI builds them from flags).

Each field that is also a command-line flag names it in its metadata (`server.flags`), so its
default and help are written here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from crop_localizer import LocalizerConfig, LocalizerKind
from crop_vllm.options import CropSettings
from server.images import ImageLimits
from server.protocol import RequestCropMode

EngineKind = Literal["embedded", "remote"]


@dataclass(frozen=True)
class CropDefaults:
    """The gateway's CROP configuration: the plugin's server settings (the engine loads them as
    HF-config keys, so the gateway's token accounting and the engine's pruning use the same
    numbers) and the mode of requests without a `crop` field (`auto`: the settings'
    `default_mode` on the regions the localizer or the client gives)."""

    settings: CropSettings = field(default_factory=CropSettings)
    request_mode: RequestCropMode = "auto"


@dataclass(frozen=True)
class Limits:
    """Per-request and server-wide limits (each one answers with a documented error)."""

    max_concurrent_requests: int = field(
        default=64, metadata={"flag": "--max-concurrent-requests", "help": "beyond this: 429"}
    )
    retry_after_s: int = 1
    max_images: int = field(default=4, metadata={"flag": "--max-images", "help": "per request"})
    max_body_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={"flag": "--max-body-bytes", "help": "larger request bodies: 413"},
    )
    max_n: int = field(
        default=4, metadata={"flag": "--max-n", "help": "largest n (choices per request)"}
    )
    max_tokens: int = field(
        default=4096,
        metadata={"flag": "--max-tokens", "help": "largest max_tokens a request may ask"},
    )
    default_max_tokens: int | None = field(
        default=None,
        metadata={
            "flag": "--default-max-tokens",
            "type": int,
            "help": "max_tokens of requests that give none (default: as vLLM, the rest of "
            "the model's context)",
        },
    )

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "max_images", "max_body_bytes", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.default_max_tokens is not None and not (
            1 <= self.default_max_tokens <= self.max_tokens
        ):
            raise ValueError("default_max_tokens must lie in [1, max_tokens]")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything `create_app` needs.

    model: the checkpoint (local path or hub id) whose geometry the gateway uses for token
        accounting and previews; the embedded engine loads it.
    served_model_name: the name clients put in `model` (default: `model`).
    engine_args: extra vLLM `AsyncEngineArgs` fields for the embedded engine.
    remote_urls: `vllm serve` base URLs for the remote engine.
    api_keys: accepted Bearer keys; empty means no authentication.
    """

    model: str
    served_model_name: str | None = None
    engine: EngineKind = field(
        default="embedded",
        metadata={
            "flag": "--engine",
            "choices": ("embedded", "remote"),
            "help": "vLLM in this process, or `vllm serve` backends (--backend)",
        },
    )
    engine_args: dict[str, Any] = field(default_factory=dict)
    remote_urls: tuple[str, ...] = ()
    remote_retry_interval_s: float = field(
        default=5.0,
        metadata={
            "flag": "--backend-retry-interval",
            "metavar": "SECONDS",
            "help": "how often backends are probed (health, CROP settings)",
        },
    )
    crop: CropDefaults = field(default_factory=CropDefaults)
    localizer: LocalizerConfig = field(
        default_factory=lambda: LocalizerConfig(kind=LocalizerKind.NONE)
    )
    limits: Limits = field(default_factory=Limits)
    images: ImageLimits = field(default_factory=ImageLimits)
    api_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.engine == "remote" and not self.remote_urls:
            raise ValueError("the remote engine needs at least one backend URL")
        if self.engine not in ("embedded", "remote"):
            raise ValueError(f"unknown engine {self.engine!r}")

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model
