"""Errors the localizer raises, so the gateway can map each to one HTTP answer."""

from __future__ import annotations


class LocalizerError(RuntimeError):
    """Base class of the localizer's own failures."""


class LocalizerStartupError(LocalizerError):
    """Configuration, weights or embeddings that cannot work: raised at startup, not per request."""


class LocalizerOverloaded(LocalizerError):
    """The request queue is full; the caller should retry later (HTTP 503 / 429)."""


class LocalizerClosed(LocalizerError):
    """The localizer was shut down while the request waited or arrived after shutdown."""
