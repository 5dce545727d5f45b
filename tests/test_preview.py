"""The preview draws what CROP keeps where it lies in the picture (no engine needed)."""

import io

from PIL import Image

from crop_vllm.geometry import Grid, Tile
from crop_vllm.layout import PLCSettings, Region
from server.preview import render_preview

GREY = (200, 200, 200)


def test_internvl_tiles_are_drawn_over_their_own_part_of_the_picture():
    """Two tiles side by side (a 4x8 lattice of 56 px cells) and a thumbnail; with the outside
    dropped, only the region's cells in the left tile keep their brightness."""
    image = Image.new("RGB", (448, 224), GREY)
    grids = [Grid(4, 4, tile=Tile(4, 8, 0, 0)), Grid(4, 4, tile=Tile(4, 8, 0, 4)), Grid(4, 4)]
    region = Region(0.0, 0.0, 0.125, 0.25)  # lattice cell (0, 0) only
    png = render_preview(image, grids, region, PLCSettings(drop_outside=True), "")
    canvas = Image.open(io.BytesIO(png)).convert("RGB")
    assert canvas.size == image.size
    assert canvas.getpixel((28, 28)) == GREY  # cell (0, 0): in the region
    assert canvas.getpixel((28 + 56, 28)) != GREY  # cell (0, 1): left tile, dropped
    assert canvas.getpixel((28 + 5 * 56, 28)) != GREY  # cell (0, 5): right tile, dropped
