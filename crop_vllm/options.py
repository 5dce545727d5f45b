"""CROP options: server-wide settings (from the HF config) and per-request plans (from kwargs).

Server-wide settings (`CropSettings`) travel as flat keys of the model's HF config, so `vllm serve`
sets them with `--hf-overrides '{"architectures": [...], "crop_outside_stride": 4}'` and every
process (API server, engine core, workers) reads the same values. Per-request options arrive as
`mm_processor_kwargs` (`crop_mode`, `crop_regions`); they are validated here, once, into a
canonical form that the processor hashes per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from crop_vllm.layout import CropMode, PLCSettings, Region

#: Request keys this plugin reads from `mm_processor_kwargs`.
REQUEST_KEYS = ("crop_mode", "crop_regions")

#: Prefix of every server setting's HF-config key (`crop_<field name>`).
SETTING_PREFIX = "crop_"


class CropRequestError(ValueError):
    """A request's CROP options are invalid (vLLM turns ValueError into a 400-class error)."""


@dataclass(frozen=True)
class CropSettings:
    """Server-wide CROP settings: the single source of their names, defaults and meaning.

    Each field travels as the flat HF-config key `crop_<name>` (`--hf-overrides`), so every vLLM
    process reads the same values; the gateway's `--crop-<name>` flags, its engine settings and
    the deployment files are derived from these fields (`setting_fields`, `to_hf_overrides`).
    """

    inside_stride: int = field(
        default=1, metadata={"help": "pooling window side inside the region (1 = full resolution)"}
    )
    outside_stride: int = field(
        default=4, metadata={"help": "pooling window side outside the region"}
    )
    drop_outside: bool = field(
        default=False, metadata={"help": "drop the outside tokens instead of pooling them"}
    )
    ilp_layer: int = field(
        default=2, metadata={"help": "decoder layer K where ILP drops the outside tokens"}
    )
    enable_ilp: bool = field(
        default=False, metadata={"help": "allow the `ilp` and `plc+ilp` modes"}
    )
    ilp_compact_kv: bool = field(
        default=True,
        metadata={
            "help": "with ILP, layers >= K hold KV only for the kept tokens (frees the dropped "
            "tokens' KV memory; false: full allocation, ILP saves compute only)"
        },
    )
    default_mode: CropMode = field(
        default=CropMode.PLC,
        metadata={"help": "mode used when a request gives regions but no mode"},
    )

    def __post_init__(self) -> None:
        mode = _parse_mode(self.default_mode, "crop_default_mode")
        object.__setattr__(self, "default_mode", mode)
        for spec in setting_fields():
            value = getattr(self, spec.name)
            if spec.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{spec.key} must be true or false, got {value!r}")
            if spec.type == "int" and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ValueError(f"{spec.key} must be an integer >= 0, got {value!r}")
        PLCSettings(self.inside_stride, self.outside_stride, self.drop_outside)  # validates
        if self.default_mode is CropMode.OFF:
            raise ValueError("crop_default_mode is the pruning regions get: it cannot be 'off'")
        if self.default_mode.uses_ilp and not self.enable_ilp:
            raise ValueError(
                f"crop_default_mode {self.default_mode.value!r} needs crop_enable_ilp=true"
            )

    @property
    def plc(self) -> PLCSettings:
        return PLCSettings(self.inside_stride, self.outside_stride, self.drop_outside)

    @property
    def enabled_modes(self) -> frozenset[CropMode]:
        """The modes requests may ask for on this server."""
        return frozenset(mode for mode in CropMode if self.enable_ilp or not mode.uses_ilp)

    def engine_requirements(self) -> dict[str, object]:
        """The vLLM engine arguments these settings need (the startup check refuses others)."""
        if self.enable_ilp and not self.ilp_compact_kv:
            return {"enable_prefix_caching": False}
        return {}

    @classmethod
    def from_hf_config(cls, hf_config: object) -> CropSettings:
        """The settings a model's HF config carries (defaults for keys it lacks)."""
        return cls(
            **{
                spec.name: getattr(hf_config, spec.key)
                for spec in setting_fields()
                if hasattr(hf_config, spec.key)
            }
        )

    def to_hf_overrides(self) -> dict[str, object]:
        """The flat HF-config keys that make an engine run with these settings."""
        return {
            spec.key: getattr(self, spec.name).value
            if isinstance(getattr(self, spec.name), CropMode)
            else getattr(self, spec.name)
            for spec in setting_fields()
        }


@dataclass(frozen=True)
class SettingField:
    """How one `CropSettings` field is spelled outside Python."""

    name: str
    type: str
    default: object
    help: str

    @property
    def key(self) -> str:
        """The HF-config key (`--hf-overrides`)."""
        return SETTING_PREFIX + self.name


def setting_fields() -> tuple[SettingField, ...]:
    """Every server setting, in declaration order."""
    return tuple(
        SettingField(f.name, str(f.type), f.default, f.metadata["help"])
        for f in fields(CropSettings)
    )


@dataclass(frozen=True)
class ImagePlan:
    """What CROP does to one image: the mode and its region (None: leave the image alone)."""

    mode: CropMode
    region: Region | None

    @property
    def plc_region(self) -> Region | None:
        return self.region if self.mode.uses_plc else None

    def without_ilp(self) -> ImagePlan | None:
        """The same plan with inner-LLM pruning left out (None when nothing remains)."""
        if self.mode is CropMode.PLC_ILP:
            return ImagePlan(CropMode.PLC, self.region)
        return self if self.mode is CropMode.PLC else None


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
