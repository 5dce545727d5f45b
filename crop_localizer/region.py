"""Detections -> the contextual region: union, context margin, minimum size, outward snapping.

The rule is deliberately conservative: an uncertain region only costs pruning opportunity,
while a wrong one costs answer quality, so without a confident detection there is no region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crop_localizer.results import Detection
from crop_vllm.layout import CellBox, Region, snap_to_grid

PAPER_GRID = 8  # CROP localizes on an 8x8 grid of the image


@dataclass(frozen=True)
class RegionChoice:
    """The rule's verdict for one image (`region` snapped to the grid, or None with a reason)."""

    region: Region | None
    cells: CellBox | None
    used: tuple[Detection, ...]
    reason: str | None


@dataclass(frozen=True)
class RegionRule:
    """How detections become a region.

    conf: minimum detection confidence.
    top_k: the most confident detections kept per asked-for class (others are not the target,
        and a long tail of weak boxes would only grow the region).
    margin: context added on each side, as a fraction of the union box's width / height.
    min_size: minimum width and height of the region as a fraction of the image, so a tiny
        object still keeps some surroundings; grown around its centre, shifted to stay inside.
    grid: the grid the region snaps outward to (the paper's 8x8).
    """

    conf: float = 0.25
    top_k: int = 3
    margin: float = 0.1
    min_size: float = 0.25
    grid: int = PAPER_GRID

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"conf must lie in [0, 1], got {self.conf}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.margin < 0.0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if not 0.0 <= self.min_size <= 1.0:
            raise ValueError(f"min_size must lie in [0, 1], got {self.min_size}")
        if self.grid < 1:
            raise ValueError(f"grid must be >= 1, got {self.grid}")

    def choose(self, detections: Sequence[Detection], phrases: Sequence[str]) -> RegionChoice:
        """Apply the rule to one image's detections of the classes in `phrases`."""
        used = self._confident(detections, phrases)
        if not used:
            asked = ", ".join(repr(p) for p in phrases)
            return RegionChoice(
                None, None, (), f"no detection of {asked} with confidence >= {self.conf}"
            )
        union = Region(
            min(d.box.x0 for d in used),
            min(d.box.y0 for d in used),
            max(d.box.x1 for d in used),
            max(d.box.y1 for d in used),
        )
        cells = snap_to_grid(self.grow(union), self.grid, self.grid)
        return RegionChoice(cells.to_region(self.grid, self.grid), cells, used, None)

    def grow(self, box: Region) -> Region:
        """Add the context margin, then enforce the minimum size, staying inside the image."""
        x0, x1 = _grow_span(box.x0, box.x1, self.margin, self.min_size)
        y0, y1 = _grow_span(box.y0, box.y1, self.margin, self.min_size)
        return Region(x0, y0, x1, y1)

    def _confident(
        self, detections: Sequence[Detection], phrases: Sequence[str]
    ) -> tuple[Detection, ...]:
        wanted = set(phrases)
        by_label: dict[str, list[Detection]] = {}
        for detection in detections:
            if detection.label in wanted and detection.confidence >= self.conf:
                by_label.setdefault(detection.label, []).append(detection)
        kept = [
            d
            for group in by_label.values()
            for d in sorted(group, key=lambda d: d.confidence, reverse=True)[: self.top_k]
        ]
        return tuple(sorted(kept, key=lambda d: d.confidence, reverse=True))


def _grow_span(lo: float, hi: float, margin: float, min_size: float) -> tuple[float, float]:
    """One axis of `RegionRule.grow`: widen by `margin` per side, then up to `min_size`."""
    pad = (hi - lo) * margin
    lo, hi = max(lo - pad, 0.0), min(hi + pad, 1.0)
    if hi - lo < min_size:
        # Centred on the box, shifted to stay inside, so a corner object keeps the full size.
        centre = (lo + hi) / 2
        lo = min(max(centre - min_size / 2, 0.0), 1.0 - min_size)
        hi = min(lo + min_size, 1.0)
    return lo, hi
