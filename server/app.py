"""The FastAPI application: factory, lifespan and the engine it serves with.

`create_app(config)` builds everything from the configuration at startup (model geometry,
engine, localizer) and closes what it built at shutdown; tests and embedders may pass an
already-started engine or a localizer instead, which then stay theirs to close. Uvicorn drains
in-flight requests before the lifespan shutdown runs, so shutdown is graceful.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from crop_localizer import Localizer, build_localizer
from server.accounting import ModelGeometry
from server.config import GatewayConfig
from server.engines import Engine
from server.errors import install_error_handlers
from server.gateway import Gateway
from server.images import ImageLoader
from server.metrics import GatewayMetrics
from server.middleware import RequestContextMiddleware
from server.pipeline import Pipeline
from server.routes import router

logger = logging.getLogger(__name__)


def build_engine(config: GatewayConfig, geometry: ModelGeometry) -> Engine:
    if config.engine == "remote":
        from server.engines.remote import RemoteEngine

        return RemoteEngine(config.remote_urls, retry_interval_s=config.remote_retry_interval_s)
    from server.engines.embedded import EmbeddedEngine

    engine_args = {**geometry.settings.engine_requirements(), **config.engine_args}
    return EmbeddedEngine(
        config.model,
        hf_overrides=geometry.engine_hf_overrides(),
        max_images=config.limits.max_images,
        engine_args=engine_args,
    )


def create_app(
    config: GatewayConfig,
    *,
    engine: Engine | None = None,
    localizer: Localizer | None = None,
) -> FastAPI:
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        geometry = await asyncio.to_thread(ModelGeometry.load, config.model, config.crop.settings)
        async with contextlib.AsyncExitStack() as owned:
            the_engine = engine
            if the_engine is None:
                the_engine = build_engine(config, geometry)
                await the_engine.start()
                owned.push_async_callback(the_engine.aclose)
            the_localizer = localizer
            if the_localizer is None:
                logger.info("localizer: %s", config.localizer.kind.value)
                the_localizer = await asyncio.to_thread(
                    build_localizer, config.localizer, registry=metrics.registry
                )
                owned.push_async_callback(the_localizer.aclose)
            loader = ImageLoader(config.images)
            owned.push_async_callback(loader.aclose)
            app.state.gateway = Gateway(
                config, metrics, the_engine, Pipeline(config, geometry, loader, the_localizer)
            )
            logger.info("serving %s with the %s engine", config.model_name, the_engine.kind)
            yield
            logger.info("shutting down")

    app = FastAPI(
        title="CROP serving gateway",
        version="0.1.0",
        summary="OpenAI-compatible chat completions with question-guided visual-token pruning.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=config.limits.max_body_bytes
    )
    app.include_router(router)
    return app
