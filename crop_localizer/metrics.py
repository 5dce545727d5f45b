"""Prometheus metrics of the localizer, all named `crop_localizer_*`."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

# Localization latencies, from a batched GPU call (ms) to a busy CPU (s); the gateway reuses them.
LOCALIZER_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LocalizerMetrics:
    """One set of collectors per registry: pass a fresh `CollectorRegistry` in tests."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.batch_size = Histogram(
            "crop_localizer_batch_size",
            "Images per detector forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.queue_wait = Histogram(
            "crop_localizer_queue_wait_seconds",
            "Time an image waited in the micro-batcher queue before its forward pass started.",
            buckets=LOCALIZER_SECONDS_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "crop_localizer_inference_seconds",
            "Time of one batched detector call (preprocess, forward, NMS).",
            buckets=LOCALIZER_SECONDS_BUCKETS,
            registry=registry,
        )
        self.regions = Counter(
            "crop_localizer_regions",
            "Images localized, by outcome: found (a region) or not_found (no pruning).",
            ["outcome"],
            registry=registry,
        )
        self.overloaded = Counter(
            "crop_localizer_overloaded",
            "Requests rejected because the localizer queue was full.",
            registry=registry,
        )

    def count_region(self, found: bool) -> None:
        self.regions.labels(outcome="found" if found else "not_found").inc()
