"""Draw what CROP keeps of an image: the region and the kept visual-token grid, as a PNG.

Each kept token is outlined over the cells it covers: full-resolution cells inside the region
in green, pooled windows outside it in orange; cells PLC drops are darkened. The finest view of
the model is drawn: InternVL's tiles, each over its part of the picture; otherwise the grid with
the most cells (LLaVA-NeXT's AnyRes tiles rather than its base view), which covers the whole
picture, so normalized coordinates map straight onto the image.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence

from fastapi.responses import Response
from PIL import Image, ImageDraw

from crop_vllm.geometry import Grid, grid_layout
from crop_vllm.layout import PLCSettings, Region
from server.accounting import ModelGeometry
from server.pipeline import Prepared

_MIN_SIDE = 448  # small images are scaled up so that one-cell outlines stay visible
_INSIDE = (40, 220, 90)
_OUTSIDE = (255, 160, 0)
_REGION = (230, 30, 30)


async def preview_response(prepared: Prepared, index: int, geometry: ModelGeometry) -> Response:
    """The PNG of image `index` of a prepared request, with what CROP keeps in its headers."""
    result = prepared.results[index]
    usage = prepared.crop_usage.images[index]
    region = result.region if result is not None and prepared.mode.uses_plc else None
    image = prepared.engine_request.images[index]
    caption = (
        f"CROP {prepared.mode.value}: {usage.visual_tokens_after_plc} of "
        f"{usage.visual_tokens_full} visual tokens"
    )
    png = await asyncio.to_thread(
        lambda: render_preview(
            image.pixels(),
            geometry.grids(image.width, image.height),
            region,
            geometry.settings.plc,
            caption,
        )
    )
    headers = {
        "X-Crop-Mode": prepared.mode.value,
        "X-Crop-Region": json.dumps(usage.region),
        "X-Crop-Region-Source": usage.region_source or "none",
        "X-Crop-Visual-Tokens-Full": str(usage.visual_tokens_full),
        "X-Crop-Visual-Tokens-Kept": str(usage.visual_tokens_after_plc),
    }
    return Response(png, media_type="image/png", headers=headers)


def render_preview(
    image: Image.Image,
    grids: Sequence[Grid],
    region: Region | None,
    settings: PLCSettings,
    caption: str,
) -> bytes:
    """PNG bytes of `image` with the kept tokens of its finest grid(s) drawn on it."""
    drawn = [g for g in grids if g.tile is not None] or [max(grids, key=lambda g: g.rows * g.cols)]
    scale = max(1.0, _MIN_SIDE / max(image.width, image.height))
    width, height = round(image.width * scale), round(image.height * scale)
    canvas = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    layouts = [grid_layout(grid, region, settings) for grid in drawn]

    def box(grid: Grid, row0: int, col0: int, row1: int, col1: int) -> tuple[int, int, int, int]:
        """Pixel box of a grid's cells rows [row0, row1) x cols [col0, col1)."""
        rows, cols, top, left = grid.rows, grid.cols, 0, 0
        if grid.tile is not None:  # the grid's cells in the lattice that covers the picture
            rows, cols = grid.tile.lattice_rows, grid.tile.lattice_cols
            top, left = grid.tile.row0, grid.tile.col0
        return (
            round((left + col0) * width / cols),
            round((top + row0) * height / rows),
            round((left + col1) * width / cols) - 1,
            round((top + row1) * height / rows) - 1,
        )

    shade = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    shading = ImageDraw.Draw(shade)
    for grid, layout in zip(drawn, layouts, strict=True):
        kept = {cell for token in layout.tokens for cell in token.cells}
        for cell in range(grid.rows * grid.cols):
            if cell not in kept:
                row, col = divmod(cell, grid.cols)
                shading.rectangle(box(grid, row, col, row + 1, col + 1), fill=(0, 0, 0, 170))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), shade).convert("RGB")

    draw = ImageDraw.Draw(canvas)
    for grid, layout in zip(drawn, layouts, strict=True):
        for token in layout.tokens:
            rows = [c // grid.cols for c in token.cells]
            cols = [c % grid.cols for c in token.cells]
            color = _INSIDE if token.inside else _OUTSIDE
            outline = box(grid, min(rows), min(cols), max(rows) + 1, max(cols) + 1)
            draw.rectangle(outline, outline=color)
    if region is not None:
        draw.rectangle(
            (region.x0 * width, region.y0 * height, region.x1 * width - 1, region.y1 * height - 1),
            outline=_REGION,
            width=3,
        )
    text_box = draw.textbbox((4, 4), caption)
    draw.rectangle((0, 0, text_box[2] + 4, text_box[3] + 4), fill=(0, 0, 0))
    draw.text((4, 4), caption, fill=(255, 255, 255))

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
