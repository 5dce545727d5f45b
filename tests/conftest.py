"""Shared fixtures: tiny checkpoints (built once per checkout, in tests/.cache) and real vLLM
engines, gateways and localizers (the plugin modules below)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Helper modules with asserts, imported by test modules before pytest could rewrite them.
pytest.register_assert_rewrite(
    "tests.engine_fixtures",
    "tests.engine_support",
    "tests.gateway_fixtures",
    "tests.localizer_fixtures",
    "tests.reference_ilp",
    "tests.reference_plc",
)

#: The one way fixtures are shared: these modules are plugins of every test module.
pytest_plugins = ["tests.engine_fixtures", "tests.gateway_fixtures", "tests.localizer_fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY_CACHE = Path(__file__).parent / ".cache" / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """`tiny_checkpoint(arch) -> Path`: a tiny random checkpoint, built on first use."""
    from crop_vllm.testing.tiny_models import build_tiny_model

    def get(arch: str) -> Path:
        return build_tiny_model(arch, TINY_CACHE / arch)

    return get
