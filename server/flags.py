"""Command-line flags generated from the configuration dataclasses, so each default, type and
help text is written once: on the field.

A field becomes a flag when its metadata names one (`metadata={"flag": "--max-images", "help":
...}`); other metadata entries are argparse keywords (`action`, `type`, `metavar`, `choices`).
The CROP server settings are the plugin's `CropSettings`: every field is a flag
`--crop-<name>` (`crop_setting_flags`), so a setting the plugin adds appears here by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from crop_vllm.layout import CropMode
from crop_vllm.options import CropSettings, setting_fields

_ARGPARSE_KEYS = ("action", "type", "metavar", "choices")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _dest(cls: type, name: str) -> str:
    return f"{cls.__name__}.{name}"


def add_flags(group: argparse._ArgumentGroup, cls: type) -> None:
    """One flag per field of dataclass `cls` whose metadata names one."""
    for field in dataclasses.fields(cls):
        if "flag" not in field.metadata:
            continue
        extra = {k: v for k, v in field.metadata.items() if k in _ARGPARSE_KEYS}
        default = field.default
        help_text = field.metadata.get("help", "")
        action = extra.get("action")
        if action in ("store_true", "store_false"):
            help_text += " (a switch, off by default)%(default).0s"
        else:
            if "choices" not in extra:
                extra.setdefault("metavar", field.name.upper())
            if action == "append":
                default = []  # argparse appends to a copy of the default
            elif "type" not in extra and default is not None:
                extra["type"] = type(default)
        group.add_argument(
            field.metadata["flag"],
            dest=_dest(cls, field.name),
            default=default,
            help=help_text.strip(),
            **extra,
        )


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values of `cls`'s flags, as keyword arguments for `cls`."""
    values = {}
    for field in dataclasses.fields(cls):
        if "flag" in field.metadata:
            value = getattr(args, _dest(cls, field.name))
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


_SETTING_TYPES: dict[str, dict[str, Any]] = {
    "int": {"type": int, "metavar": "N"},
    "float": {"type": float},
    "str": {"type": str},
    # `--crop-enable-ilp` alone means true; a value lets deployment files set it from a variable.
    "bool": {"type": parse_bool, "nargs": "?", "const": True, "metavar": "BOOL"},
    "CropMode": {"choices": [mode.value for mode in CropMode]},
}


def _crop_flag(name: str) -> str:
    return "--crop-" + name.replace("_", "-")


def crop_setting_flags(group: argparse._ArgumentGroup) -> None:
    """`--crop-<name>` for every CROP server setting, with the plugin's default and help."""
    for spec in setting_fields():
        if spec.type not in _SETTING_TYPES:
            raise TypeError(f"no command-line form for {spec.key} of type {spec.type}")
        default = spec.default.value if isinstance(spec.default, CropMode) else spec.default
        group.add_argument(
            _crop_flag(spec.name),
            dest=spec.key,
            default=default,
            help=f"{spec.help} (the engine's `{spec.key}`)",
            **_SETTING_TYPES[spec.type],
        )


def crop_settings(args: argparse.Namespace) -> CropSettings:
    return CropSettings(**{spec.name: getattr(args, spec.key) for spec in setting_fields()})


def crop_setting_args(settings: CropSettings) -> list[str]:
    """The `--crop-<name>=<value>` arguments that give a gateway `settings`."""
    args = []
    for spec in setting_fields():
        value = getattr(settings, spec.name)
        text = value.value if isinstance(value, CropMode) else str(value).lower()
        args.append(f"{_crop_flag(spec.name)}={text}")
    return args
