"""This package's version, as installed (pyproject's `version`)."""

from __future__ import annotations

import importlib.metadata

try:
    CROP_SERVING_VERSION = importlib.metadata.version("crop-serving")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    CROP_SERVING_VERSION = "unknown"
