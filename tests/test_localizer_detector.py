"""YOLO-World detector on a random-init model: batching, class masking, weights loading."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from crop_localizer.detector import ClassPrompts, YoloWorldDetector
from crop_localizer.errors import LocalizerStartupError
from crop_localizer.testing import fake_vocabulary, random_world_model
from crop_localizer.vocabulary import COCO_NAMES
from tests.localizer_fixtures import TEST_IMGSZ, TEST_MODEL_YAML, scene

# Different sizes, aspect ratios and class lists of different lengths in one batch.
CASES = [
    (scene(1, 320, 240), ("dog",)),
    (scene(2, 200, 360), ("cat", "person", "umbrella")),
    (scene(3, 256, 256), ("car", "sign")),
    (scene(4, 500, 180), ("woman", "bus", "tree", "book", "cup")),
]


def prompts_for(vocabulary, names) -> ClassPrompts:
    return ClassPrompts(tuple(names), vocabulary.embed(names))


def assert_same_detections(batched, alone):
    assert len(batched) == len(alone) > 0
    assert [d.label for d in batched] == [d.label for d in alone]
    np.testing.assert_allclose(
        [d.box.as_list() for d in batched], [d.box.as_list() for d in alone], atol=1e-4
    )
    np.testing.assert_allclose(
        [d.confidence for d in batched], [d.confidence for d in alone], atol=1e-4
    )


def test_batched_equals_one_by_one_with_different_class_lists(detector, vocabulary):
    images = [image for image, _ in CASES]
    prompts = [prompts_for(vocabulary, names) for _, names in CASES]
    batched = detector.detect(images, prompts)
    for image, prompt, together in zip(images, prompts, batched, strict=True):
        assert_same_detections(together, detector.detect([image], [prompt])[0])


def test_labels_come_only_from_the_images_own_prompts(detector, vocabulary):
    images = [image for image, _ in CASES]
    batched = detector.detect(images, [prompts_for(vocabulary, names) for _, names in CASES])
    for (_, names), found in zip(CASES, batched, strict=True):
        assert {d.label for d in found} <= set(names)


def test_padding_a_class_list_with_its_own_duplicate_changes_nothing(detector, vocabulary):
    image = CASES[1][0]
    names = ("cat", "person", "umbrella")
    plain = detector.detect([image], [prompts_for(vocabulary, names)])[0]
    padded = detector.pad_prompts([prompts_for(vocabulary, names)])
    assert padded.shape == (1, 3, 512)
    with torch.inference_mode():
        x = detector.preprocess([image])
        doubled = torch.cat([padded, padded[:, :1]], dim=1)  # the batcher's padding, by hand
        preds = detector.inference(x, doubled)
    with_duplicate = detector.postprocess(preds, [prompts_for(vocabulary, names)], [(360, 200)])
    assert_same_detections(with_duplicate[0], plain)


def test_boxes_depend_on_the_image(detector, vocabulary):
    prompt = prompts_for(vocabulary, ("dog", "cat"))
    first, second = detector.detect([scene(10), scene(11)], [prompt, prompt])
    assert first and second
    assert first[0].box != second[0].box


def test_boxes_depend_on_the_prompt(detector, vocabulary):
    image = scene(12)
    dogs = detector.detect([image], [prompts_for(vocabulary, ("dog",))])[0]
    cars = detector.detect([image], [prompts_for(vocabulary, ("car",))])[0]
    assert [d.box for d in dogs[:5]] != [d.box for d in cars[:5]]


def test_boxes_are_normalised_to_the_original_image(detector, vocabulary):
    found = detector.detect([scene(5, 640, 160)], [prompts_for(vocabulary, ("dog",))])[0]
    assert found
    for d in found:
        assert 0.0 <= d.box.x0 <= d.box.x1 <= 1.0 and 0.0 <= d.box.y0 <= d.box.y1 <= 1.0
        assert 0.25 <= d.confidence <= 1.0


def test_images_and_prompt_lists_must_pair_up(detector, vocabulary):
    with pytest.raises(ValueError, match="2 images but 1 prompt"):
        detector.detect([scene(1), scene(2)], [prompts_for(vocabulary, ("dog",))])


def test_prompts_need_one_embedding_row_per_name(vocabulary):
    with pytest.raises(ValueError, match="2 names"):
        ClassPrompts(("dog", "cat"), vocabulary.embed(["dog"]))


def test_missing_weights_file_fails_at_startup(tmp_path):
    with pytest.raises(LocalizerStartupError, match="weights not found"):
        YoloWorldDetector.from_weights(tmp_path / "yolov8s-worldv2.pt")


def test_broken_weights_file_fails_at_startup(tmp_path):
    broken = tmp_path / "yolov8s-worldv2.pt"
    broken.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(LocalizerStartupError, match="cannot load YOLO-World weights"):
        YoloWorldDetector.from_weights(broken)


def test_weights_must_be_a_pt_checkpoint(tmp_path):
    other = tmp_path / "yolov8s-worldv2.onnx"
    other.write_bytes(b"onnx")
    with pytest.raises(LocalizerStartupError, match=r"must be a \.pt"):
        YoloWorldDetector.from_weights(other)


def test_checkpoint_of_another_model_type_is_refused(tmp_path):
    path = tmp_path / "not-world.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(LocalizerStartupError, match="Linear"):
        YoloWorldDetector.from_weights(path)


def test_saved_checkpoint_loads_and_detects_like_the_original(tmp_path, vocabulary):
    model = random_world_model(TEST_MODEL_YAML, seed=7, calibration_batches=1)
    path = tmp_path / "yolov8n-worldv2.pt"
    torch.save({"model": model}, path)
    original = YoloWorldDetector(model, imgsz=TEST_IMGSZ)
    loaded = YoloWorldDetector.from_weights(path, imgsz=TEST_IMGSZ)
    prompt = prompts_for(vocabulary, ("dog", "cat"))
    image = scene(6)
    assert_same_detections(
        loaded.detect([image], [prompt])[0], original.detect([image], [prompt])[0]
    )


def test_checkpoint_class_embeddings_become_the_builtin_vocabulary(world_model):
    coco = fake_vocabulary(COCO_NAMES)
    world_model.txt_feats = torch.from_numpy(coco.vectors)[None]
    try:
        del world_model.names  # official checkpoints may lack names: they are COCO's
        builtin = YoloWorldDetector(world_model, imgsz=TEST_IMGSZ).builtin_vocabulary()
    finally:
        world_model.names = {i: str(i) for i in range(80)}
    assert builtin is not None and builtin.names == COCO_NAMES
    np.testing.assert_allclose(builtin.embed(["dog"]), coco.embed(["dog"]), atol=1e-6)


def test_yaml_model_with_placeholder_names_has_no_builtin_vocabulary(detector):
    assert detector.builtin_vocabulary() is None


def test_fast_nms_kernel_is_available_to_ultralytics():
    # Without torchvision imported, Ultralytics falls back to a pure-torch NMS that took
    # seconds per image on a random-init model's thousands of candidate boxes.
    assert "torchvision" in sys.modules
