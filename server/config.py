"""The gateway's settings, validated once at startup (the CLI builds them from flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from crop_localizer import LocalizerConfig, LocalizerKind
from crop_vllm.layout import CropMode
from server.images import ImageLimits
from server.protocol import RequestCropMode

EngineKind = Literal["embedded", "remote"]


@dataclass(frozen=True)
class CropDefaults:
    """Server-wide CROP settings; they become the engine's `hf_overrides` keys, so the gateway's
    token accounting and the engine's pruning use the same numbers.

    `request_mode` applies to requests without a `crop` field; `default_mode` is the pruning
    that `auto` stands for. ILP modes need `enable_ilp` (the engine then runs eager and without
    prefix caching).
    """

    request_mode: RequestCropMode = "auto"
    default_mode: CropMode = CropMode.PLC
    inside_stride: int = 1
    outside_stride: int = 4
    drop_outside: bool = False
    ilp_layer: int = 2
    enable_ilp: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_mode", CropMode(self.default_mode))
        if self.default_mode is CropMode.OFF:
            raise ValueError("default_mode is the pruning `auto` applies; use request_mode 'off'")
        if self.default_mode.uses_ilp and not self.enable_ilp:
            raise ValueError(f"default mode {self.default_mode.value!r} needs enable_ilp")

    def hf_overrides(self) -> dict[str, object]:
        return {
            "crop_inside_stride": self.inside_stride,
            "crop_outside_stride": self.outside_stride,
            "crop_drop_outside": self.drop_outside,
            "crop_ilp_layer": self.ilp_layer,
            "crop_enable_ilp": self.enable_ilp,
            "crop_default_mode": self.default_mode.value,
        }


@dataclass(frozen=True)
class Limits:
    """Per-request and server-wide limits (each one answers with a documented error)."""

    max_concurrent_requests: int = 64
    retry_after_s: int = 1
    max_images: int = 4
    max_body_bytes: int = 64 * 1024 * 1024
    max_n: int = 4
    max_tokens: int = 4096
    default_max_tokens: int = 512

    def __post_init__(self) -> None:
        for name in ("max_concurrent_requests", "max_images", "max_body_bytes", "max_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 1 <= self.default_max_tokens <= self.max_tokens:
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
    engine: EngineKind = "embedded"
    engine_args: dict[str, Any] = field(default_factory=dict)
    remote_urls: tuple[str, ...] = ()
    remote_retry_interval_s: float = 5.0
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
