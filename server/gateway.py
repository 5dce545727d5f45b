"""The state every route shares, built once in the application's lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.config import GatewayConfig
from server.engines import Engine
from server.metrics import GatewayMetrics
from server.pipeline import Pipeline


@dataclass
class Gateway:
    config: GatewayConfig
    metrics: GatewayMetrics
    engine: Engine
    pipeline: Pipeline
    #: Requests holding a concurrency slot now.
    active: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
