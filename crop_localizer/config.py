"""The localizer's settings, validated once at startup."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from crop_localizer.region import RegionRule


class LocalizerKind(StrEnum):
    YOLO_WORLD = "yolo-world"  # the default: question-guided regions from YOLO-World
    NONE = "none"  # never proposes a region, so nothing is pruned unless the client asks


@dataclass(frozen=True)
class LocalizerConfig:
    """How to build a localizer (see `build_localizer`). Fields whose metadata names a flag are
    `crop-server serve` options (`server.flags`).

    weights: `yolov8{s,m,l,x}-worldv2.pt` (required for yolo-world; never downloaded).
    clip_weights: a local CLIP ViT-B/32 checkpoint: open vocabulary, needs the `clip` package.
    vocab_embeddings: an `.npz` from `python -m crop_localizer.embed_vocab` (closed vocabulary).
        Without either, the class embeddings saved in the weights (COCO's 80) are used.
    conf, top_k, margin, min_size: the region rule (`RegionRule`); iou: NMS overlap threshold.
    imgsz: detector input side in pixels (multiple of 32).
    max_phrases: most object names taken from one question.
    max_batch, max_wait_ms, max_queue: micro-batching (images per forward, longest wait for a
        batch to fill, images waiting before new requests are rejected as overloaded).
    device, half: torch device; half precision is used on GPUs only.
    """

    kind: LocalizerKind = LocalizerKind.YOLO_WORLD
    weights: Path | None = field(
        default=None,
        metadata={"flag": "--localizer-weights", "type": Path, "help": "yolov8*-worldv2.pt"},
    )
    clip_weights: Path | None = field(
        default=None,
        metadata={
            "flag": "--localizer-clip-weights",
            "type": Path,
            "help": "local CLIP ViT-B/32 checkpoint (open vocabulary)",
        },
    )
    vocab_embeddings: Path | None = field(
        default=None,
        metadata={
            "flag": "--localizer-vocab-embeddings",
            "type": Path,
            "help": ".npz from `python -m crop_localizer.embed_vocab`",
        },
    )
    conf: float = field(
        default=0.25, metadata={"flag": "--localizer-conf", "help": "minimum detection confidence"}
    )
    iou: float = 0.7
    top_k: int = 3
    margin: float = 0.1
    min_size: float = 0.25
    imgsz: int = field(
        default=640,
        metadata={
            "flag": "--localizer-imgsz",
            "help": "detector input side in px (multiple of 32): smaller is cheaper, finds less",
        },
    )
    max_phrases: int = 4
    max_batch: int = field(
        default=8, metadata={"flag": "--localizer-max-batch", "help": "images per detector forward"}
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata={
            "flag": "--localizer-max-wait-ms",
            "help": "longest wait for a detector batch to fill",
        },
    )
    max_queue: int = 64
    device: str = field(
        default="cpu", metadata={"flag": "--localizer-device", "help": "torch device"}
    )
    half: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LocalizerKind(self.kind))
        for name in ("weights", "clip_weights", "vocab_embeddings"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        self.region_rule()  # validates conf, top_k, margin, min_size
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f"iou must lie in [0, 1], got {self.iou}")
        if self.max_batch < 1 or self.max_queue < 1 or self.max_phrases < 1:
            raise ValueError("max_batch, max_queue and max_phrases must be >= 1")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")

    def region_rule(self) -> RegionRule:
        return RegionRule(
            conf=self.conf, top_k=self.top_k, margin=self.margin, min_size=self.min_size
        )
