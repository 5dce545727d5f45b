"""The vLLM internals the family classes rely on are indexed and match the installed vLLM."""

import vllm

from crop_vllm.families import FAMILIES
from crop_vllm.vllm_surface import MODEL_TOUCHPOINTS, TOUCHPOINTS, vllm_problems


def test_every_family_touchpoint_matches_the_installed_vllm():
    touchpoints = tuple(t for family in MODEL_TOUCHPOINTS.values() for t in family)
    assert vllm_problems(touchpoints, vllm.__version__) == []


def test_family_touchpoints_are_keyed_by_served_families_and_in_the_index():
    assert set(MODEL_TOUCHPOINTS) <= {family.model_type for family in FAMILIES}
    assert all(t in TOUCHPOINTS for family in MODEL_TOUCHPOINTS.values() for t in family)
