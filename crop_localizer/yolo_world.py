"""The default localizer: question phrases -> YOLO-World detections -> contextual region."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from crop_localizer.batcher import MicroBatcher
from crop_localizer.detector import ClassPrompts, YoloWorldDetector
from crop_localizer.errors import LocalizerStartupError
from crop_localizer.metrics import LocalizerMetrics
from crop_localizer.phrases import PhraseExtractor
from crop_localizer.region import RegionRule
from crop_localizer.results import Detection, LocalizationResult
from crop_localizer.text_embeddings import TextEmbedder

NO_PHRASE_REASON = "the question names no object the detector knows"


@dataclass(frozen=True)
class _Job:
    image: Image.Image
    names: tuple[str, ...]


class YoloWorldLocalizer:
    """Finds each image's region for its question; images of all callers share forward passes.

    Images whose question names no known object never reach the detector. A client-supplied
    region always wins over this localizer: see `localize_with_client_regions`.
    """

    def __init__(
        self,
        detector: YoloWorldDetector,
        embedder: TextEmbedder,
        *,
        rule: RegionRule,
        metrics: LocalizerMetrics,
        max_phrases: int = 4,
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        max_queue: int = 64,
    ):
        if embedder.dim != detector.embed_dim:
            raise LocalizerStartupError(
                f"text embeddings are {embedder.dim}-d but the detector expects "
                f"{detector.embed_dim}-d (YOLO-World v2 uses CLIP ViT-B/32: 512)"
            )
        self.detector = detector
        self.embedder = embedder
        self.rule = rule
        self.metrics = metrics
        self.phrases = PhraseExtractor(embedder.vocabulary, max_phrases=max_phrases)
        self.batcher: MicroBatcher[_Job, list[Detection]] = MicroBatcher(
            self._detect_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            metrics=metrics,
        )

    async def localize(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[LocalizationResult]:
        """One result per image; `questions[i]` is the question asked about `images[i]`.

        Raises `LocalizerOverloaded` (nothing queued) when the queue lacks room for all images.
        """
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        started = time.perf_counter()
        names = [tuple(self.phrases.extract(q)) for q in questions]
        asked = [i for i, n in enumerate(names) if n]
        detections = await self.batcher.run([_Job(images[i], names[i]) for i in asked])
        found = dict(zip(asked, detections, strict=True))
        elapsed = time.perf_counter() - started

        results = []
        for i, phrases in enumerate(names):
            if i not in found:
                result = LocalizationResult(None, None, reason=NO_PHRASE_REASON, elapsed_s=elapsed)
            else:
                choice = self.rule.choose(found[i], phrases)
                result = LocalizationResult(
                    choice.region,
                    choice.cells,
                    phrases=phrases,
                    detections=choice.used,
                    reason=choice.reason,
                    elapsed_s=elapsed,
                )
            self.metrics.count_region(result.region is not None)
            results.append(result)
        return results

    async def aclose(self) -> None:
        await self.batcher.aclose()

    def _detect_batch(self, jobs: list[_Job]) -> list[list[Detection]]:
        """Runs on the batcher's worker thread: embeddings, then one detector call."""
        prompts = [ClassPrompts(job.names, self.embedder.embed(job.names)) for job in jobs]
        return self.detector.detect([job.image for job in jobs], prompts)
