"""Prometheus metrics of the gateway, all named `crop_*`, in a registry of the app's own.

A registry per app (not the process-global one) lets several gateways run in one process, as
the tests do, and keeps vLLM's in-process metrics out of the gateway's `/metrics`. The YOLO-World
localizer registers its `crop_localizer_*` metrics in the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crop_localizer.metrics import LOCALIZER_SECONDS_BUCKETS
from crop_vllm.layout import CropMode
from server.protocol import CropUsage

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)
_FRACTION_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class GatewayMetrics:
    """The gateway's metrics and what moves them."""

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
        self.kv_bytes = Counter(
            "crop_kv_bytes",
            "KV-cache bytes served chat requests held at their end: with_saving (what the engine "
            "held: with ILP's KV saving, layers >= K hold only the kept tokens) and "
            "without_saving (every layer holds every token). Requests whose KV dtype is packed, "
            "or whose engine does not say its block size, are not counted.",
            ["allocation"],
            registry=r,
        )
        self.kv_saved_fraction = Histogram(
            "crop_kv_saved_fraction",
            "Per served chat request with images: the share of its KV cache that ILP's KV "
            "saving freed (1 - with_saving / without_saving layer-blocks; 0 without ILP).",
            buckets=_FRACTION_BUCKETS,
            registry=r,
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
            "From request arrival to the first generated token, of streamed chat requests.",
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

        self.gateway_overhead = Histogram(
            "crop_gateway_overhead_seconds",
            "Time a chat request that reached the engine spent in the gateway outside the engine "
            "call and the localizer (parsing, image loading, accounting, relaying the answer).",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.image_token_checks = Counter(
            "crop_prompt_token_checks",
            "Served chat requests whose image tokens in the engine's usage.prompt_tokens "
            "(vLLM's prompt_tokens_details) were compared with the gateway's "
            "visual_tokens_after_plc: match, mismatch, or unchecked (the engine reports no "
            "details: run vllm serve with --enable-prompt-tokens-details).",
            ["result"],
            registry=r,
        )
        self.backend_up = Gauge(
            "crop_backend_up",
            "1 while a remote backend serves requests (alive, CROP settings agree).",
            ["backend"],
            registry=r,
        )
        self.backend_settings_mismatch = Gauge(
            "crop_backend_settings_mismatch",
            "1 while a remote backend's CROP settings or model differ from the gateway's "
            "(it is out of rotation until they agree).",
            ["backend"],
            registry=r,
        )

    def record_backend(self, url: str, up: bool, mismatch: bool) -> None:
        self.backend_up.labels(url).set(int(up))
        self.backend_settings_mismatch.labels(url).set(int(mismatch))

    def record_image_token_check(self, engine: int | None, predicted: int) -> bool:
        """Count the comparison; False when the engine's image tokens differ from `predicted`."""
        result = "unchecked" if engine is None else "match" if engine == predicted else "mismatch"
        self.image_token_checks.labels(result).inc()
        return result != "mismatch"

    def record_served(
        self, crop: CropUsage, mode: CropMode, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Count a chat request the engine finished: its tokens, CROP's savings (visual tokens,
        KV cache), its images."""
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.visual_tokens.labels("full").inc(crop.visual_tokens_full)
        self.visual_tokens.labels("after_plc").inc(crop.visual_tokens_after_plc)
        self.visual_tokens.labels("after_ilp").inc(crop.visual_tokens_after_ilp)
        self.visual_tokens_saved.inc(crop.visual_tokens_full - crop.visual_tokens_after_ilp)
        for image in crop.images:
            self.images.labels(image.region_source or "none").inc()
        kv = crop.kv
        if kv is not None and kv.bytes_with_saving is not None:
            self.kv_bytes.labels("with_saving").inc(kv.bytes_with_saving)
            self.kv_bytes.labels("without_saving").inc(kv.bytes_without_saving or 0)
        if kv is not None and crop.images:
            self.kv_saved_fraction.observe(kv.saved_fraction)
        if crop.images and mode is not CropMode.OFF:
            self.localization_seconds.observe(crop.localizer_seconds)
            self.localization_batch.observe(
                sum(image.region_source != "client" for image in crop.images)
            )
