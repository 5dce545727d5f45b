"""GPU-only tests (`make gpu-check` runs them); skipped where CUDA is not available."""

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-check` on one)")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)
