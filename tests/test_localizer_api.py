"""The public surface: factory and config, embedding files, client regions, the `none` kind."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client import CollectorRegistry

from crop_localizer import (
    LocalizerConfig,
    LocalizerKind,
    LocalizerStartupError,
    NoneLocalizer,
    RegionSource,
    build_localizer,
    localize_with_client_regions,
)
from crop_localizer.embed_vocab import main as embed_vocab_main
from crop_localizer.embed_vocab import read_names
from crop_localizer.testing import fake_vocabulary
from crop_localizer.text_embeddings import ClipTextEmbedder, VocabularyEmbeddings
from crop_localizer.vocabulary import OBJECT_NAMES
from crop_localizer.yolo_world import YoloWorldLocalizer
from crop_vllm.layout import CellBox, Region
from tests.localizer_fixtures import TEST_IMGSZ, make_localizer, scene


@pytest.fixture(scope="module")
def checkpoint(world_model, tmp_path_factory):
    """The test model saved as an Ultralytics checkpoint (random weights, placeholder names)."""
    path = tmp_path_factory.mktemp("weights") / "yolov8n-worldv2.pt"
    torch.save({"model": world_model}, path)
    return path


@pytest.fixture(scope="module")
def vocab_file(vocabulary, tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.npz"
    vocabulary.save(path)
    return path


async def test_none_localizer_never_proposes_a_region():
    results = await NoneLocalizer().localize([scene(1), scene(2)], ["Where is the dog?"] * 2)
    assert [r.region for r in results] == [None, None]
    assert all("disabled" in r.reason for r in results)


def test_none_kind_needs_no_weights():
    assert isinstance(build_localizer(LocalizerConfig(kind="none")), NoneLocalizer)


def test_yolo_world_kind_without_weights_fails_at_startup():
    with pytest.raises(LocalizerStartupError, match="needs weights"):
        build_localizer(LocalizerConfig())


async def test_yolo_world_built_from_files_localizes(checkpoint, vocab_file):
    config = LocalizerConfig(weights=checkpoint, vocab_embeddings=vocab_file, imgsz=TEST_IMGSZ)
    localizer = build_localizer(config, registry=CollectorRegistry())
    assert isinstance(localizer, YoloWorldLocalizer)
    [result] = await localizer.localize([scene(3)], ["Is the woman holding an umbrella?"])
    assert result.phrases == ("woman", "umbrella")
    assert result.region is not None and result.cells is not None
    assert result.detections and result.elapsed_s > 0
    await localizer.aclose()


def test_checkpoint_without_class_names_needs_an_embedding_source(checkpoint):
    with pytest.raises(LocalizerStartupError, match="no named class embeddings"):
        build_localizer(LocalizerConfig(weights=checkpoint), registry=CollectorRegistry())


def test_embeddings_of_the_wrong_width_fail_at_startup(detector):
    narrow = fake_vocabulary(["dog", "cat"], dim=256)
    with pytest.raises(LocalizerStartupError, match="256-d"):
        make_localizer(detector, narrow)


def test_missing_clip_weights_fail_at_startup(tmp_path):
    with pytest.raises(LocalizerStartupError, match="CLIP weights file not found"):
        ClipTextEmbedder(tmp_path / "ViT-B-32.pt")


def test_unusable_clip_setup_fails_at_startup(tmp_path):
    fake = tmp_path / "ViT-B-32.pt"
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(LocalizerStartupError, match="clip"):  # no package, or unloadable file
        ClipTextEmbedder(fake)


def test_vocabulary_file_round_trips(vocabulary, vocab_file):
    loaded = VocabularyEmbeddings.load(vocab_file)
    assert loaded.names == vocabulary.names == tuple(OBJECT_NAMES)
    np.testing.assert_array_equal(loaded.vectors, vocabulary.vectors)
    np.testing.assert_array_equal(loaded.embed(["umbrella"]), vocabulary.embed(["umbrella"]))


def test_missing_vocabulary_file_fails_at_startup(tmp_path):
    with pytest.raises(LocalizerStartupError, match="not found"):
        VocabularyEmbeddings.load(tmp_path / "vocab.npz")


def test_corrupt_vocabulary_file_fails_at_startup(tmp_path):
    path = tmp_path / "vocab.npz"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(LocalizerStartupError, match="unusable"):
        VocabularyEmbeddings.load(path)


def test_vocabulary_file_with_unnormalised_rows_fails_at_startup(tmp_path):
    path = tmp_path / "vocab.npz"
    np.savez(path, names=np.array(["dog"]), vectors=np.full((1, 512), 0.5, np.float32))
    with pytest.raises(LocalizerStartupError, match="L2-normalised"):
        VocabularyEmbeddings.load(path)


def test_vocabulary_names_must_be_unique_ignoring_case():
    vectors = np.stack([fake_vocabulary(["dog"]).vectors[0]] * 2)
    with pytest.raises(ValueError, match="unique"):
        VocabularyEmbeddings(["Dog", "dog"], vectors)


def test_unknown_name_cannot_be_embedded(vocabulary):
    with pytest.raises(ValueError, match="unicorn"):
        vocabulary.embed(["dog", "unicorn"])


async def test_client_region_wins_and_only_the_rest_is_localized(detector, vocabulary):
    registry = CollectorRegistry()
    localizer = make_localizer(detector, vocabulary, registry)
    client = Region(0.1, 0.2, 0.3, 0.45)
    results = await localize_with_client_regions(
        localizer,
        [scene(1), scene(2)].__getitem__,
        ["Where is the dog?", "Where is the dog?"],
        [client, None],
    )
    assert results[0].source is RegionSource.CLIENT
    assert results[0].region == client  # exactly as given, not snapped
    assert results[0].cells == CellBox(row0=1, col0=0, row1=4, col1=3)
    assert results[1].source is RegionSource.LOCALIZER and results[1].region is not None
    assert registry.get_sample_value("crop_localizer_batch_size_sum") == 1.0
    await localizer.aclose()


async def test_client_regions_with_the_none_localizer_still_apply():
    results = await localize_with_client_regions(
        NoneLocalizer(), never_decoded, ["q", "q"], [None, Region(0, 0, 1, 0.5)]
    )
    assert results[0].region is None and results[1].region == Region(0, 0, 1, 0.5)


def never_decoded(index: int) -> Image.Image:
    raise AssertionError(f"image {index} was decoded for a localizer that does not look")


def test_config_parses_kind_and_paths():
    config = LocalizerConfig(kind="none", weights="w.pt")
    assert config.kind is LocalizerKind.NONE
    assert config.weights is not None and config.weights.name == "w.pt"


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "sam"},
        {"conf": -0.1},
        {"iou": 1.5},
        {"top_k": 0},
        {"max_batch": 0},
        {"max_queue": 0},
        {"max_wait_ms": -1},
    ],
)
def test_config_rejects_invalid_settings(options):
    with pytest.raises(ValueError):
        LocalizerConfig(**options)


def test_embed_vocab_reports_missing_clip_weights(tmp_path, capsys):
    out = tmp_path / "vocab.npz"
    status = embed_vocab_main(["--clip-weights", str(tmp_path / "none.pt"), "--out", str(out)])
    assert status == 1
    assert "CLIP weights file not found" in capsys.readouterr().err
    assert not out.exists()


def test_embed_vocab_reads_a_names_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("# my classes\nDog\n\nfire_hydrant  # COCO spelling\ndog\n")
    assert read_names(names) == ["dog", "fire hydrant"]
    assert read_names(None) == list(OBJECT_NAMES)


def test_loading_ultralytics_leaves_threads_and_environment_alone(tmp_path):
    probe = (
        "import os, torch; default = torch.get_num_threads(); "
        "import crop_localizer.detector, PIL.Image, ultralytics.utils.patches as p; "
        "print(os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads() == default, "
        "PIL.Image.open is not p.image_open, os.environ['YOLO_OFFLINE'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["YOLO_CONFIG_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[-1].split() == ["None", "True", "True", "1"]
