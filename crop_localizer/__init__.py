"""CROP's localizer: finds the image region a question is about, for visual-token pruning.

Light to import (no torch): the YOLO-World parts load only when `build_localizer` builds one.
A client-supplied region always wins over the localizer (`localize_with_client_regions`).
"""

from crop_localizer.config import LocalizerConfig, LocalizerKind
from crop_localizer.errors import (
    LocalizerClosed,
    LocalizerError,
    LocalizerOverloaded,
    LocalizerStartupError,
)
from crop_localizer.localizer import (
    Localizer,
    NoneLocalizer,
    build_localizer,
    localize_with_client_regions,
)
from crop_localizer.phrases import PhraseExtractor
from crop_localizer.region import PAPER_GRID, RegionChoice, RegionRule
from crop_localizer.results import Detection, LocalizationResult, RegionSource

__all__ = [
    "PAPER_GRID",
    "Detection",
    "LocalizationResult",
    "Localizer",
    "LocalizerClosed",
    "LocalizerConfig",
    "LocalizerError",
    "LocalizerKind",
    "LocalizerOverloaded",
    "LocalizerStartupError",
    "NoneLocalizer",
    "PhraseExtractor",
    "RegionChoice",
    "RegionRule",
    "RegionSource",
    "build_localizer",
    "localize_with_client_regions",
]
