"""Prometheus metrics of the gateway, all named `crop_*`, in a registry of the app's own.

A registry per app (not the process-global one) lets several gateways run in one process, as
the tests do, and keeps vLLM's in-process metrics out of the gateway's `/metrics`. The YOLO-World
localizer registers its `crop_localizer_*` metrics in the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crop_localizer.metrics import LOCALIZER_SECONDS_BUCKETS

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "crop_requests",
            "Chat and preview requests by endpoint, requested CROP mode ('unknown' when the body "
            "was unreadable) and HTTP status (499: the client went away).",
            ["endpoint", "mode", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "crop_requests_in_flight", "Requests being served now.", ["endpoint"], registry=r
        )
        self.visual_tokens = Counter(
            "crop_visual_tokens",
            "Visual tokens of served chat requests by stage: full (unpruned model), after_plc "
            "(prefilled), after_ilp (kept in the later decoder layers).",
            ["stage"],
            registry=r,
        )
        self.visual_tokens_saved = Counter(
            "crop_visual_tokens_saved",
            "Visual tokens CROP saved (full - after_ilp).",
            registry=r,
        )
        self.prompt_tokens = Counter(
            "crop_prompt_tokens", "Prompt tokens the engine prefilled.", registry=r
        )
        self.completion_tokens = Counter(
            "crop_completion_tokens", "Tokens the engine generated.", registry=r
        )
        self.images = Counter(
            "crop_images",
            "Images of served requests by region source: client, localizer or none.",
            ["source"],
            registry=r,
        )
        self.localization_seconds = Histogram(
            "crop_localization_seconds",
            "Wall time of a request's localization stage (all its images).",
            buckets=LOCALIZER_SECONDS_BUCKETS,
            registry=r,
        )
        self.localization_batch = Histogram(
            "crop_localization_batch_size",
            "Images a request sent to the localizer at once.",
            buckets=(1, 2, 4, 8, 16),
            registry=r,
        )
        self.ttft = Histogram(
            "crop_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "crop_request_duration_seconds",
            "From request arrival to the last byte of the response, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
