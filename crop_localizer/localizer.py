"""The localizer interface, the `none` implementation, the factory and the client-region rule.

Precedence, enforced by the gateway with `localize_with_client_regions`: a region the client
supplies always wins, and the localizer only runs for images without one. A localizer result
without a region means "do not prune this image".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from PIL import Image
from prometheus_client import REGISTRY, CollectorRegistry

from crop_localizer.config import LocalizerConfig, LocalizerKind
from crop_localizer.errors import LocalizerStartupError
from crop_localizer.region import PAPER_GRID
from crop_localizer.results import LocalizationResult, RegionSource
from crop_vllm.layout import Region, snap_to_grid

DISABLED_REASON = "the localizer is disabled (kind 'none')"


@runtime_checkable
class Localizer(Protocol):
    """Images plus the question about each -> one region (or None, with a reason) per image."""

    async def localize(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[LocalizationResult]: ...

    async def aclose(self) -> None: ...


class NoneLocalizer:
    """Never proposes a region: serving without pruning, unless the client gives one."""

    async def localize(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[LocalizationResult]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        return self.disabled(len(images))

    @staticmethod
    def disabled(count: int) -> list[LocalizationResult]:
        return [LocalizationResult(None, None, reason=DISABLED_REASON) for _ in range(count)]

    async def aclose(self) -> None:
        return None


def build_localizer(
    config: LocalizerConfig, *, registry: CollectorRegistry = REGISTRY
) -> Localizer:
    """Build the configured localizer, loading weights and embeddings now, not per request.

    Raises `LocalizerStartupError` with the reason for missing or broken files.
    """
    if config.kind is LocalizerKind.NONE:
        return NoneLocalizer()
    if config.weights is None:
        raise LocalizerStartupError(
            "the yolo-world localizer needs weights: a local yolov8{s,m,l,x}-worldv2.pt path"
        )
    # Imported here so that the `none` kind and the gateway's imports stay free of torch.
    from crop_localizer.detector import YoloWorldDetector
    from crop_localizer.metrics import LocalizerMetrics
    from crop_localizer.text_embeddings import (
        ClipTextEmbedder,
        TextEmbedder,
        VocabularyEmbeddings,
    )
    from crop_localizer.yolo_world import YoloWorldLocalizer

    detector = YoloWorldDetector.from_weights(
        config.weights,
        imgsz=config.imgsz,
        conf=config.conf,
        iou=config.iou,
        device=config.device,
        half=config.half,
    )
    embedder: TextEmbedder | None
    if config.clip_weights is not None:
        embedder = ClipTextEmbedder(config.clip_weights, device=config.device)
    elif config.vocab_embeddings is not None:
        embedder = VocabularyEmbeddings.load(config.vocab_embeddings)
    else:
        embedder = detector.builtin_vocabulary()
    if embedder is None:
        raise LocalizerStartupError(
            f"{config.weights} carries no named class embeddings; set clip_weights or "
            "vocab_embeddings"
        )
    return YoloWorldLocalizer(
        detector,
        embedder,
        rule=config.region_rule(),
        metrics=LocalizerMetrics(registry),
        max_phrases=config.max_phrases,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1000.0,
        max_queue=config.max_queue,
    )


async def localize_with_client_regions(
    localizer: Localizer,
    pixels: Callable[[int], Image.Image],
    questions: Sequence[str],
    client_regions: Sequence[Region | None],
) -> list[LocalizationResult]:
    """Client regions win; the localizer runs only on the images without one.

    `pixels(i)` decodes image i; it is called (off the event loop) only for the images the
    localizer looks at, and never for the `none` localizer, which does not look at pixels.
    A client region is returned exactly as given (source CLIENT) with the paper-grid cells that
    cover it, so the pruning matches what the client asked for.
    """
    if len(questions) != len(client_regions):
        raise ValueError("questions and client_regions must have the same length")
    started = time.perf_counter()
    todo = [i for i, region in enumerate(client_regions) if region is None]
    if isinstance(localizer, NoneLocalizer):
        found = NoneLocalizer.disabled(len(todo))
    else:
        images = await asyncio.to_thread(lambda: [pixels(i) for i in todo])
        found = await localizer.localize(images, [questions[i] for i in todo])
    by_index = dict(zip(todo, found, strict=True))
    elapsed = time.perf_counter() - started
    results = []
    for i, region in enumerate(client_regions):
        if region is None:
            results.append(by_index[i])
        else:
            cells = snap_to_grid(region, PAPER_GRID, PAPER_GRID)
            results.append(
                LocalizationResult(region, cells, elapsed_s=elapsed, source=RegionSource.CLIENT)
            )
    return results
