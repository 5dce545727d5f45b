"""Region -> kept cells -> token layout: the pure math of CROP's pre-LLM compression (PLC).

Everything here is plain Python on small integers, with no torch or vLLM import, so that the
processor (which must size placeholders before the encoder runs), the model (which applies the
same layout to the projected features), the localizer and the gateway all share one definition.

Coordinates: a `Region` is normalized to the image (0..1, x to the right, y down). A visual grid
has `rows` x `cols` cells; cell (r, c) covers x in [c/cols, (c+1)/cols) and y likewise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

# Tolerance for snapping: 0.25 * 8 may come out as 2.0000000000000004 and must stay 2.
_SNAP_EPS = 1e-6


class CropMode(StrEnum):
    """Which pruning a request asks for."""

    OFF = "off"
    PLC = "plc"
    ILP = "ilp"
    PLC_ILP = "plc+ilp"

    @property
    def uses_plc(self) -> bool:
        return self in (CropMode.PLC, CropMode.PLC_ILP)

    @property
    def uses_ilp(self) -> bool:
        return self in (CropMode.ILP, CropMode.PLC_ILP)


@dataclass(frozen=True)
class Region:
    """A rectangle in normalized image coordinates, 0 <= x0 <= x1 <= 1, 0 <= y0 <= y1 <= 1."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError(f"region coordinates must be finite numbers, got {values}")
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"region coordinates must lie in [0, 1], got {list(values)}")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError(f"region needs x0 <= x1 and y0 <= y1, got {list(values)}")

    @classmethod
    def parse(cls, value: object) -> Region:
        """Build from `[x0, y0, x1, y1]` (list or tuple), raising ValueError with a clear reason."""
        if isinstance(value, Region):
            return value
        if not isinstance(value, list | tuple) or len(value) != 4:
            raise ValueError(f"a region is [x0, y0, x1, y1] in 0..1, got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
            raise ValueError(f"region coordinates must be numbers, got {value!r}")
        return cls(*(float(v) for v in value))

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


FULL_IMAGE = Region(0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class CellBox:
    """Grid cells rows [row0, row1) x cols [col0, col1) (half-open, never empty)."""

    row0: int
    col0: int
    row1: int
    col1: int

    def contains(self, row: int, col: int) -> bool:
        return self.row0 <= row < self.row1 and self.col0 <= col < self.col1

    def to_region(self, rows: int, cols: int) -> Region:
        """The normalized rectangle these cells cover."""
        return Region(self.col0 / cols, self.row0 / rows, self.col1 / cols, self.row1 / rows)

    def inclusive(self) -> tuple[int, int, int, int]:
        """The paper's form: [x_min, y_min, x_max, y_max], 0-indexed inclusive cells."""
        return (self.col0, self.row0, self.col1 - 1, self.row1 - 1)


def snap_to_grid(region: Region, rows: int, cols: int) -> CellBox:
    """Snap a region outward to whole cells of a rows x cols grid (at least one cell)."""
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be non-empty, got {rows}x{cols}")

    def span(lo: float, hi: float, n: int) -> tuple[int, int]:
        start = min(max(math.floor(lo * n + _SNAP_EPS), 0), n - 1)
        stop = min(max(math.ceil(hi * n - _SNAP_EPS), start + 1), n)
        return start, stop

    row0, row1 = span(region.y0, region.y1, rows)
    col0, col1 = span(region.x0, region.x1, cols)
    return CellBox(row0, col0, row1, col1)


@dataclass(frozen=True)
class PLCSettings:
    """How PLC compresses: `inside_stride`/`outside_stride` are pooling window sides (1 = keep)."""

    inside_stride: int = 1
    outside_stride: int = 4
    drop_outside: bool = False

    def __post_init__(self) -> None:
        for name in ("inside_stride", "outside_stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class Token:
    """One output token: its original grid position and the cells it averages."""

    row: int
    col: int
    cells: tuple[int, ...]  # flat cell indices r * cols + c
    inside: bool


@dataclass(frozen=True)
class Layout:
    """The tokens PLC keeps for one grid, in raster order of their positions."""

    rows: int
    cols: int
    tokens: tuple[Token, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_identity(self) -> bool:
        return len(self.tokens) == self.rows * self.cols

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        return tuple((t.row, t.col) for t in self.tokens)

    def row_ends(self) -> tuple[int, ...]:
        """Indices of the last token of each grid row that keeps any token (for row separators)."""
        return tuple(
            i
            for i, t in enumerate(self.tokens)
            if i + 1 == len(self.tokens) or self.tokens[i + 1].row != t.row
        )


def _pool_windows(
    cells: list[tuple[int, int]], stride: int, origin: tuple[int, int], cols: int, inside: bool
) -> list[Token]:
    """Group cells into stride x stride windows anchored at `origin`; one token per window."""
    windows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in cells:
        key = ((r - origin[0]) // stride, (c - origin[1]) // stride)
        windows.setdefault(key, []).append((r, c))
    tokens = []
    for members in windows.values():
        mean_r = sum(r for r, _ in members) / len(members)
        mean_c = sum(c for _, c in members) / len(members)
        # The member nearest the window's centroid stands for it (ties: first in raster order),
        # so positions stay unique, inside the grid, and on a cell the token really covers.
        rep = min(members, key=lambda rc: ((rc[0] - mean_r) ** 2 + (rc[1] - mean_c) ** 2, rc))
        tokens.append(Token(rep[0], rep[1], tuple(r * cols + c for r, c in members), inside))
    return tokens


@lru_cache(maxsize=4096)
def build_layout(
    rows: int, cols: int, region: Region | None, settings: PLCSettings = PLCSettings()
) -> Layout:
    """The kept tokens for a rows x cols grid; `region=None` keeps everything unchanged.

    Inside cells are pooled in `inside_stride` windows anchored at the region's corner; outside
    cells in `outside_stride` windows anchored at the grid origin, each window averaging only its
    outside cells, so no token mixes inside and outside. With `drop_outside` they vanish.
    """
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be non-empty, got {rows}x{cols}")
    if region is None:
        return _identity_layout(rows, cols)
    return build_layout_in_box(rows, cols, snap_to_grid(region, rows, cols), settings)


@lru_cache(maxsize=4096)
def build_layout_in_box(
    rows: int, cols: int, box: CellBox | None, settings: PLCSettings = PLCSettings()
) -> Layout:
    """`build_layout` for a region already snapped to `box`; `box=None`: no cell is inside (a
    tile of the image that the region misses), so every cell is pooled (or dropped) as outside.
    """
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be non-empty, got {rows}x{cols}")
    tokens = []
    if box is not None:
        inside = [(r, c) for r in range(box.row0, box.row1) for c in range(box.col0, box.col1)]
        tokens += _pool_windows(inside, settings.inside_stride, (box.row0, box.col0), cols, True)
    if not settings.drop_outside:
        outside = [
            (r, c)
            for r in range(rows)
            for c in range(cols)
            if box is None or not box.contains(r, c)
        ]
        tokens += _pool_windows(outside, settings.outside_stride, (0, 0), cols, False)
    tokens.sort(key=lambda t: (t.row, t.col))
    return Layout(rows, cols, tuple(tokens))


@lru_cache(maxsize=256)
def _identity_layout(rows: int, cols: int) -> Layout:
    tokens = tuple(Token(r, c, (r * cols + c,), True) for r in range(rows) for c in range(cols))
    return Layout(rows, cols, tokens)


@lru_cache(maxsize=1024)
def region_marked_layout(rows: int, cols: int, region: Region) -> Layout:
    """Every cell is its own token, `inside` telling whether it lies in the (snapped) region.

    What plain ILP (no PLC) starts from: the prefill keeps the whole grid and inner-LLM pruning
    later drops the tokens that are not `inside`.
    """
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be non-empty, got {rows}x{cols}")
    return box_marked_layout(rows, cols, snap_to_grid(region, rows, cols))


@lru_cache(maxsize=1024)
def box_marked_layout(rows: int, cols: int, box: CellBox | None) -> Layout:
    """`region_marked_layout` for a region already snapped to `box` (None: nothing inside)."""
    tokens = tuple(
        Token(r, c, (r * cols + c,), box is not None and box.contains(r, c))
        for r in range(rows)
        for c in range(cols)
    )
    return Layout(rows, cols, tokens)
