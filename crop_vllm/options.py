"""CROP options: server-wide settings (from the HF config) and per-request plans (from kwargs).

Server-wide settings travel as flat keys of the model's HF config, so `vllm serve` sets them with
`--hf-overrides '{"architectures": [...], "crop_outside_stride": 4}'` and every process (API
server, engine core, workers) reads the same values. Per-request options arrive as
`mm_processor_kwargs` (`crop_mode`, `crop_regions`); they are validated here, once, into a
canonical form that the processor hashes per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crop_vllm.layout import CropMode, PLCSettings, Region

#: Request keys this plugin reads from `mm_processor_kwargs`.
REQUEST_KEYS = ("crop_mode", "crop_regions")

#: Server-setting keys read from the HF config, with their defaults.
SETTING_DEFAULTS: dict[str, object] = {
    "crop_inside_stride": 1,
    "crop_outside_stride": 4,
    "crop_drop_outside": False,
    "crop_ilp_layer": 2,
    "crop_enable_ilp": False,
    "crop_default_mode": "plc",
}

#: Modes the plugin implements. ILP modes also need the server to opt in (`crop_enable_ilp`),
#: because inner-LLM pruning constrains the engine (no prefix caching, eager execution).
SUPPORTED_MODES = frozenset(CropMode)


class CropRequestError(ValueError):
    """A request's CROP options are invalid (vLLM turns ValueError into a 400-class error)."""


@dataclass(frozen=True)
class CropSettings:
    """Server-wide CROP settings."""

    plc: PLCSettings = field(default_factory=PLCSettings)
    ilp_layer: int = 2
    ilp_enabled: bool = False
    default_mode: CropMode = CropMode.PLC

    @property
    def enabled_modes(self) -> frozenset[CropMode]:
        """The modes requests may ask for on this server."""
        if self.ilp_enabled:
            return SUPPORTED_MODES
        return frozenset(mode for mode in SUPPORTED_MODES if not mode.uses_ilp)

    @classmethod
    def from_hf_config(cls, hf_config: object) -> CropSettings:
        def get(key: str) -> object:
            return getattr(hf_config, key, SETTING_DEFAULTS[key])

        drop_outside = get("crop_drop_outside")
        ilp_layer = get("crop_ilp_layer")
        ilp_enabled = get("crop_enable_ilp")
        if not isinstance(drop_outside, bool):
            raise ValueError(f"crop_drop_outside must be true or false, got {drop_outside!r}")
        if not isinstance(ilp_enabled, bool):
            raise ValueError(f"crop_enable_ilp must be true or false, got {ilp_enabled!r}")
        if not isinstance(ilp_layer, int) or isinstance(ilp_layer, bool) or ilp_layer < 0:
            raise ValueError(f"crop_ilp_layer must be an integer >= 0, got {ilp_layer!r}")
        default_mode = _parse_mode(get("crop_default_mode"), "crop_default_mode")
        if default_mode.uses_ilp and not ilp_enabled:
            raise ValueError(f"crop_default_mode {default_mode.value!r} needs crop_enable_ilp=true")
        return cls(
            plc=PLCSettings(
                inside_stride=get("crop_inside_stride"),  # type: ignore[arg-type]
                outside_stride=get("crop_outside_stride"),  # type: ignore[arg-type]
                drop_outside=drop_outside,
            ),
            ilp_layer=ilp_layer,
            ilp_enabled=ilp_enabled,
            default_mode=default_mode,
        )


@dataclass(frozen=True)
class ImagePlan:
    """What CROP does to one image: the mode and its region (None: leave the image alone)."""

    mode: CropMode
    region: Region | None

    @property
    def plc_region(self) -> Region | None:
        return self.region if self.mode.uses_plc else None


def _parse_mode(value: object, key: str = "crop_mode") -> CropMode:
    try:
        return CropMode(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in CropMode)
        raise CropRequestError(f"{key} must be one of {allowed}, got {value!r}") from None


def parse_request(
    kwargs: Mapping[str, object], num_images: int, settings: CropSettings
) -> list[ImagePlan] | None:
    """Validate a request's CROP kwargs; None when CROP leaves every image untouched."""
    raw_mode = kwargs.get("crop_mode")
    raw_regions = kwargs.get("crop_regions")
    if raw_mode is None and raw_regions is None:
        return None
    mode = settings.default_mode if raw_mode is None else _parse_mode(raw_mode)
    if mode not in settings.enabled_modes:
        raise CropRequestError(
            f"crop_mode {mode.value!r} is not supported by this server: it runs without "
            f"inner-LLM pruning (supported: "
            f"{', '.join(sorted(m.value for m in settings.enabled_modes))}; start the engine "
            f"with --hf-overrides '{{\"crop_enable_ilp\": true, ...}}' to allow ILP modes)"
        )
    if raw_regions is None:
        # A mode without regions is valid (the gateway may find none); nothing to prune.
        return None
    if not isinstance(raw_regions, list | tuple):
        raise CropRequestError(
            f"crop_regions must be a list with one [x0, y0, x1, y1] or null per image, "
            f"got {type(raw_regions).__name__}"
        )
    if len(raw_regions) != num_images:
        raise CropRequestError(
            f"crop_regions has {len(raw_regions)} entries but the request has "
            f"{num_images} image(s): give one region or null per image"
        )
    plans = []
    for index, raw in enumerate(raw_regions):
        try:
            region = None if raw is None else Region.parse(raw)
        except ValueError as exc:
            raise CropRequestError(f"crop_regions[{index}]: {exc}") from None
        plans.append(ImagePlan(mode, region))
    if mode is CropMode.OFF or all(p.region is None for p in plans):
        return None
    return plans


def encode_plans(plans: list[ImagePlan] | None) -> dict[str, object]:
    """Canonical, hashable kwargs for validated plans ({} when CROP does nothing)."""
    if plans is None:
        return {}
    return {
        "crop_mode": plans[0].mode.value,
        "crop_regions": [None if p.region is None else p.region.as_list() for p in plans],
    }


def decode_plans(kwargs: Mapping[str, object]) -> list[ImagePlan] | None:
    """Inverse of `encode_plans` (trusted input: already validated)."""
    regions = kwargs.get("crop_regions")
    if regions is None:
        return None
    mode = CropMode(kwargs["crop_mode"])
    return [ImagePlan(mode, None if r is None else Region(*r)) for r in regions]  # type: ignore[union-attr]


def strip_request_keys(kwargs: Mapping[str, object]) -> dict[str, object]:
    """The kwargs without CROP's keys, safe to hand to HF processors."""
    return {k: v for k, v in kwargs.items() if k not in REQUEST_KEYS}
