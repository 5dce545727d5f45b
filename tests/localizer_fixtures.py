"""Shared fixtures of the localizer tests: a random-init YOLO-World and fake text embeddings.

A plugin of every test module (`tests/conftest.py`); import its helpers by name.
Ultralytics is pointed at a temporary config folder before anything imports it, and is kept
offline by `crop_localizer.offline`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "crop-localizer-tests" / "ultralytics")
)

from crop_localizer.detector import YoloWorldDetector
from crop_localizer.metrics import LocalizerMetrics
from crop_localizer.region import RegionRule
from crop_localizer.testing import fake_vocabulary, random_world_model
from crop_localizer.text_embeddings import VocabularyEmbeddings
from crop_localizer.vocabulary import OBJECT_NAMES
from crop_localizer.yolo_world import YoloWorldLocalizer
from crop_vllm.testing.photos import picture

# The smallest YOLO-World v2 at a small input keeps the whole suite to seconds on 2 cores.
TEST_MODEL_YAML = "yolov8n-worldv2.yaml"
TEST_IMGSZ = 320


def scene(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A photo-like picture at the localizer tests' default size."""
    return picture(seed, width, height, noise=12)


@pytest.fixture(scope="session")
def world_model():
    return random_world_model(TEST_MODEL_YAML, seed=0)


@pytest.fixture(scope="session")
def detector(world_model) -> YoloWorldDetector:
    return YoloWorldDetector(world_model, imgsz=TEST_IMGSZ, conf=0.25)


@pytest.fixture(scope="session")
def vocabulary() -> VocabularyEmbeddings:
    return fake_vocabulary(OBJECT_NAMES)


def make_localizer(
    detector: YoloWorldDetector,
    vocabulary: VocabularyEmbeddings,
    registry: CollectorRegistry | None = None,
    **batching: float,
) -> YoloWorldLocalizer:
    """A localizer on the shared detector; make one per test (it binds to the test's loop)."""
    return YoloWorldLocalizer(
        detector,
        vocabulary,
        rule=RegionRule(conf=0.5, top_k=1, margin=0.1, min_size=0.25),
        metrics=LocalizerMetrics(registry or CollectorRegistry()),
        **batching,
    )
