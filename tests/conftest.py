"""Shared fixtures: tiny checkpoints (built once per machine, outside the checkout) and real vLLM
engines, gateways and localizers (the plugin modules below).

Caches live outside the checkout, as the virtual environment does, so that a fresh clone on the
same machine (CI) reuses them: the tiny checkpoints under `~/.cache/crop-serving/tiny/<spec>`
(vLLM's compile cache keys on the model path, so the path must not change between clones) and
TorchInductor's kernels under `~/.cache/crop-serving/torchinductor`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

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
pytest_plugins = [
    "tests.engine_starts",
    "tests.engine_fixtures",
    "tests.gateway_fixtures",
    "tests.localizer_fixtures",
]

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crop-serving"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_ROOT / "torchinductor"))

# CI shares 2 cores with running engines: no per-example deadline, and the same examples on
# every run (a failure reproduces; nothing passes by luck of the draw).
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def tiny_checkpoint_dir(arch: str) -> Path:
    """Where `arch`'s tiny checkpoint lives: keyed by its spec hash (recipe, builder source and
    library versions), so every checkout of the same recipe shares one path."""
    from crop_vllm.testing.tiny_models import model_spec, spec_hash

    return CACHE_ROOT / "tiny" / spec_hash(model_spec(arch))[:16] / arch


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """`tiny_checkpoint(arch) -> Path`: a tiny random checkpoint, built on first use."""
    from crop_vllm.testing.tiny_models import build_tiny_model

    def get(arch: str) -> Path:
        return build_tiny_model(arch, tiny_checkpoint_dir(arch))

    return get
