"""The plugin refuses a vLLM its patches and overrides were not built for, naming what differs."""

import pytest

from crop_vllm.vllm_surface import (
    SUPPORTED_VLLM,
    TOUCHPOINTS,
    Touchpoint,
    UnsupportedVllmError,
    check_vllm,
    vllm_problems,
)


def test_the_installed_vllm_matches_every_touchpoint():
    assert vllm_problems(TOUCHPOINTS, SUPPORTED_VLLM + "0") == []
    check_vllm(TOUCHPOINTS)


def test_another_vllm_release_is_refused():
    assert vllm_problems((), "0.33.1") == [
        f"vLLM 0.33.1 is installed, CROP supports {SUPPORTED_VLLM}x"
    ]


def test_a_changed_signature_is_named():
    moved = Touchpoint(
        "vllm.v1.worker.utils:AttentionGroup.build_metadata",
        "called",
        "test",
        "why",
        "never",
        ("self", "common_attn_metadata"),
    )
    (problem,) = vllm_problems((moved,), SUPPORTED_VLLM + "0")
    assert (
        "AttentionGroup.build_metadata takes ('self', 'common_attn_metadata', 'ubatch_idx'"
        in problem
    )


def test_a_vanished_method_is_named():
    gone = Touchpoint(
        "vllm.v1.worker.utils:AttentionGroup.no_such_method", "called", "", "", "", ()
    )
    (problem,) = vllm_problems((gone,), SUPPORTED_VLLM + "0")
    assert "AttentionGroup.no_such_method is gone" in problem


def test_the_error_says_what_to_install(monkeypatch):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.40.0")
    with pytest.raises(UnsupportedVllmError, match=f"Install vllm=={SUPPORTED_VLLM}0"):
        check_vllm(())


def test_every_touchpoint_says_why_and_when_it_can_go():
    for touchpoint in TOUCHPOINTS:
        assert touchpoint.kind in ("patched", "overridden", "called")
        assert touchpoint.why and touchpoint.remove_when and touchpoint.user, touchpoint.symbol
