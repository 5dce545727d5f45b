"""The region rule on hand-made detections: union, confidence, top-k, margin, size, snapping."""

from __future__ import annotations

import pytest

from crop_localizer.region import RegionRule
from crop_localizer.results import Detection
from crop_vllm.layout import CellBox, Region


def det(label: str, confidence: float, x0: float, y0: float, x1: float, y1: float) -> Detection:
    return Detection(label, confidence, Region(x0, y0, x1, y1))


BARE = RegionRule(conf=0.3, top_k=3, margin=0.0, min_size=0.0)


def test_box_on_cell_boundaries_keeps_exactly_those_cells():
    choice = BARE.choose([det("dog", 0.9, 0.25, 0.5, 0.5, 0.75)], ["dog"])
    assert choice.cells == CellBox(row0=4, col0=2, row1=6, col1=4)
    assert choice.region == Region(0.25, 0.5, 0.5, 0.75)
    assert choice.cells.inclusive() == (2, 4, 3, 5)


def test_box_inside_cells_snaps_outward():
    choice = BARE.choose([det("dog", 0.9, 0.30, 0.52, 0.40, 0.60)], ["dog"])
    assert choice.cells == CellBox(row0=4, col0=2, row1=5, col1=4)
    assert choice.region == Region(0.25, 0.5, 0.5, 0.625)


def test_region_is_the_union_of_the_asked_classes():
    detections = [det("umbrella", 0.8, 0.1, 0.1, 0.2, 0.2), det("woman", 0.7, 0.6, 0.5, 0.7, 0.9)]
    choice = BARE.choose(detections, ["umbrella", "woman"])
    assert choice.region == Region(0.0, 0.0, 0.75, 1.0)
    assert [d.label for d in choice.used] == ["umbrella", "woman"]


def test_detections_of_classes_not_asked_for_are_ignored():
    detections = [det("dog", 0.9, 0.0, 0.0, 0.1, 0.1), det("cat", 0.99, 0.8, 0.8, 0.9, 0.9)]
    choice = BARE.choose(detections, ["dog"])
    assert choice.cells == CellBox(0, 0, 1, 1)
    assert [d.label for d in choice.used] == ["dog"]


def test_detections_below_confidence_are_ignored():
    detections = [det("dog", 0.9, 0.0, 0.0, 0.1, 0.1), det("dog", 0.29, 0.8, 0.8, 0.9, 0.9)]
    assert BARE.choose(detections, ["dog"]).cells == CellBox(0, 0, 1, 1)


def test_nothing_confident_gives_no_region_and_says_why():
    choice = BARE.choose([det("dog", 0.2, 0.0, 0.0, 0.5, 0.5)], ["dog", "cat"])
    assert choice.region is None and choice.cells is None and choice.used == ()
    assert choice.reason == "no detection of 'dog', 'cat' with confidence >= 0.3"


def test_no_detections_at_all_gives_no_region():
    assert BARE.choose([], ["dog"]).region is None


def test_top_k_keeps_the_most_confident_per_class():
    rule = RegionRule(conf=0.3, top_k=1, margin=0.0, min_size=0.0)
    detections = [
        det("dog", 0.5, 0.8, 0.8, 0.9, 0.9),
        det("dog", 0.9, 0.0, 0.0, 0.1, 0.1),
        det("cat", 0.4, 0.0, 0.8, 0.1, 0.9),
    ]
    choice = rule.choose(detections, ["dog", "cat"])
    assert [(d.label, d.confidence) for d in choice.used] == [("dog", 0.9), ("cat", 0.4)]
    assert choice.cells == CellBox(row0=0, col0=0, row1=8, col1=1)


def test_margin_grows_each_side_by_a_fraction_of_the_box():
    rule = RegionRule(margin=0.25, min_size=0.0)
    grown = rule.grow(Region(0.4, 0.4, 0.6, 0.8))
    assert grown.as_list() == pytest.approx([0.35, 0.3, 0.65, 0.9])
    assert rule.choose([Detection("dog", 0.9, Region(0.4, 0.4, 0.6, 0.8))], ["dog"]).cells == (
        CellBox(row0=2, col0=2, row1=8, col1=6)
    )


def test_margin_is_clipped_at_the_image_border_without_shifting():
    grown = RegionRule(margin=0.5, min_size=0.0).grow(Region(0.0, 0.0, 0.2, 0.2))
    assert grown.as_list() == pytest.approx([0.0, 0.0, 0.3, 0.3])


def test_small_box_grows_to_min_size_around_its_centre():
    grown = RegionRule(margin=0.0, min_size=0.25).grow(Region(0.5, 0.5, 0.55, 0.6))
    assert grown.as_list() == pytest.approx([0.4, 0.425, 0.65, 0.675])


def test_min_size_at_a_corner_shifts_inside_and_keeps_its_size():
    grown = RegionRule(margin=0.0, min_size=0.25).grow(Region(0.95, 0.0, 1.0, 0.05))
    assert grown.as_list() == pytest.approx([0.75, 0.0, 1.0, 0.25])


def test_min_size_region_spans_at_least_that_many_cells():
    rule = RegionRule(margin=0.0, min_size=0.25)
    choice = rule.choose([det("dog", 0.9, 0.01, 0.01, 0.02, 0.02)], ["dog"])
    assert choice.cells == CellBox(0, 0, 2, 2)


def test_whole_image_box_gives_the_whole_grid():
    choice = RegionRule().choose([det("dog", 0.9, 0.0, 0.0, 1.0, 1.0)], ["dog"])
    assert choice.cells == CellBox(0, 0, 8, 8)
    assert choice.region == Region(0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "options",
    [{"conf": 1.5}, {"top_k": 0}, {"margin": -0.1}, {"min_size": 2.0}, {"grid": 0}],
)
def test_invalid_rule_settings_are_rejected(options):
    with pytest.raises(ValueError):
        RegionRule(**options)
