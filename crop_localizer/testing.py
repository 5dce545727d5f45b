"""A working YOLO-World without weights, for tests and benchmarks on machines with no network.

A freshly initialised WorldModel outputs nothing useful: its activations collapse through the
un-fitted batch norms and the contrastive head starts with a bias of -10, so no score passes a
threshold. `random_world_model` re-estimates every batch norm's statistics on a few varied
synthetic batches (cumulative average: momentum None), zeroes the head biases and rescales the
head's logits to a moderate spread. The result is
a deterministic detector with real, input-dependent boxes: the same architecture and cost as the
trained one, with meaningless classes. `fake_vocabulary` gives names seeded random unit vectors.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from crop_localizer.offline import prepare_ultralytics

prepare_ultralytics()

import torch  # noqa: E402
from ultralytics.nn.tasks import WorldModel  # noqa: E402

from crop_localizer.text_embeddings import VocabularyEmbeddings  # noqa: E402

EMBED_DIM = 512
_LOGIT_SPREAD = 4.0  # typical largest class logit of an image after calibration


def fake_embedding(name: str, dim: int = EMBED_DIM) -> np.ndarray:
    """A unit vector determined by the name alone (not by its position in any list)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    vector = rng.standard_normal(dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def fake_vocabulary(names: Sequence[str], dim: int = EMBED_DIM) -> VocabularyEmbeddings:
    return VocabularyEmbeddings(list(names), np.stack([fake_embedding(n, dim) for n in names]))


def synthetic_images(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, size, size) in [0, 1]: flat colour patches with mild noise, roughly photo-like."""
    images = []
    for _ in range(count):
        cells = int(torch.randint(3, 12, (1,), generator=generator))
        coarse = torch.rand(1, 3, cells, cells, generator=generator)
        blocks = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")
        noise = torch.rand(1, 3, size, size, generator=generator) - 0.5
        images.append((blocks + 0.1 * noise).clamp(0, 1))
    return torch.cat(images)


def random_world_model(
    cfg: str = "yolov8s-worldv2.yaml",
    *,
    seed: int = 0,
    calibration_batches: int = 3,
    batch_size: int = 4,
    imgsz: int = 320,
    classes: int = 4,
) -> WorldModel:
    """Build `cfg` with random weights, recalibrate its batch norms and zero the head biases."""
    torch.manual_seed(seed)
    model = WorldModel(cfg, verbose=False)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    head = model.model[-1]
    head.nc = classes
    model.train()
    with torch.no_grad():
        for _ in range(calibration_batches):
            text = torch.nn.functional.normalize(
                torch.randn(batch_size, classes, EMBED_DIM, generator=generator), dim=-1
            )
            model.predict(synthetic_images(batch_size, imgsz, generator), txt_feats=text)
        for contrastive in head.cv4:
            contrastive.bias.zero_()
        # Random features are strongly correlated across channels, so the logits come out with
        # a spread of tens and every score saturates at 0 or 1. Rescale to a spread of a few
        # units: confidences then differ between boxes and a threshold means something.
        model.eval()
        text = torch.nn.functional.normalize(
            torch.randn(batch_size, classes, EMBED_DIM, generator=generator), dim=-1
        )
        scores = model.predict(synthetic_images(batch_size, imgsz, generator), txt_feats=text)[1]
        spread = float(scores["scores"].flatten(1).amax(dim=1).median())
        for contrastive in head.cv4:
            contrastive.logit_scale += math.log(_LOGIT_SPREAD / spread)
    return model
