"""The state every route shares, built once in the application's lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.config import GatewayConfig
from server.engines import Engine
from server.errors import APIError
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
    #: The engine died and cannot come back: the gateway refuses work until it exits.
    engine_dead: bool = False

    def check_serving(self) -> None:
        if self.engine_dead:
            raise APIError(
                503, "the engine has stopped; the server is restarting", code="engine_unavailable"
            )
