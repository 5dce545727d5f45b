"""What the localizer hands back: plain frozen data, free of torch, for the gateway to use."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from crop_vllm.layout import CellBox, Region


@dataclass(frozen=True)
class Detection:
    """One detector box: `box` is normalized to the image (0..1), `label` a prompt name."""

    label: str
    confidence: float
    box: Region


class RegionSource(StrEnum):
    """Who chose the region: the client always wins over the localizer."""

    CLIENT = "client"
    LOCALIZER = "localizer"


@dataclass(frozen=True)
class LocalizationResult:
    """The region for one image, or None with the reason, and what it was based on.

    A localizer region is snapped outward to the paper's grid (`cells`, grid x grid, half-open;
    `cells.inclusive()` gives the paper's [x_min, y_min, x_max, y_max] form). A client region is
    kept exactly as given, with `cells` the grid cells covering it. `detections` are those the
    region was built from (empty when none was confident or the client chose).
    """

    region: Region | None
    cells: CellBox | None
    phrases: tuple[str, ...] = ()
    detections: tuple[Detection, ...] = ()
    reason: str | None = None
    elapsed_s: float = 0.0
    source: RegionSource = RegionSource.LOCALIZER

    def __post_init__(self) -> None:
        if (self.region is None) != (self.cells is None):
            raise ValueError("region and cells must both be set or both be None")
        if self.region is None and not self.reason:
            raise ValueError("a result without a region needs a reason")
