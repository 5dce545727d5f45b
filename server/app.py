"""The FastAPI application: factory, lifespan and the engine it serves with.

`create_app(config)` builds everything from the configuration at startup (model geometry,
engine, localizer) and closes what it built at shutdown; tests and embedders may pass an
already-started engine or a localizer instead, which then stay theirs to close. Uvicorn drains
in-flight requests before the lifespan shutdown runs, so shutdown is graceful. When the engine
dies for good (the embedded engine's process was killed), the gateway refuses new work with 503
and calls `on_engine_death` (the CLI stops the server, which exits non-zero so the
orchestrator restarts it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Callable

import numpy as np
from fastapi import FastAPI
from PIL import Image

from crop_localizer import Localizer, build_localizer
from crop_vllm.layout import CropMode, Region
from server.accounting import ModelGeometry
from server.config import GatewayConfig
from server.engines import Engine
from server.engines.remote import CropCheck
from server.errors import install_error_handlers
from server.gateway import Gateway
from server.images import ImageLoader
from server.metrics import GatewayMetrics
from server.middleware import RequestContextMiddleware
from server.pipeline import Pipeline
from server.routes import router

logger = logging.getLogger(__name__)

#: How long a gateway whose engine died keeps answering 503 (health checks see it) before
#: `on_engine_death` runs.
ENGINE_DEATH_GRACE_S = 2.0
#: The probe of a remote backend's CROP settings: PLC on this region of a probe image.
_PROBE_SIZE, _PROBE_REGION = (448, 336), Region(0.0, 0.0, 0.5, 0.5)


def crop_check(geometry: ModelGeometry) -> CropCheck:
    """What a backend with the gateway's model and CROP settings answers to the probe."""
    width, height = _PROBE_SIZE
    ramp = np.linspace(0, 255, width * height, dtype=np.float64).reshape(height, width)
    pixels = np.stack([ramp, ramp[::-1], np.full_like(ramp, 96.0)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    tokens = geometry.image_tokens(width, height, _PROBE_REGION, CropMode.PLC)
    return CropCheck(
        image_url="data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
        region=(_PROBE_REGION.x0, _PROBE_REGION.y0, _PROBE_REGION.x1, _PROBE_REGION.y1),
        saved_tokens=tokens.full - tokens.after_plc,
        ilp=geometry.settings.enable_ilp,
    )


def build_engine(
    config: GatewayConfig, geometry: ModelGeometry, metrics: GatewayMetrics | None = None
) -> Engine:
    if config.engine == "remote":
        from server.engines.remote import RemoteEngine

        return RemoteEngine(
            config.remote_urls,
            crop_check=crop_check(geometry),
            report=None if metrics is None else metrics.record_backend,
            retry_interval_s=config.remote_retry_interval_s,
        )
    from server.engines.embedded import EmbeddedEngine

    engine_args = {**geometry.settings.engine_requirements(), **config.engine_args}
    return EmbeddedEngine(
        config.model,
        served_model_name=config.model_name,
        hf_overrides=geometry.engine_hf_overrides(),
        max_images=config.limits.max_images,
        engine_args=engine_args,
    )


def create_app(
    config: GatewayConfig,
    *,
    engine: Engine | None = None,
    localizer: Localizer | None = None,
    on_engine_death: Callable[[], None] | None = None,
) -> FastAPI:
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        geometry = await asyncio.to_thread(
            ModelGeometry.load,
            config.model,
            config.crop.settings,
            bool(config.engine_args.get("trust_remote_code", False)),
        )
        async with contextlib.AsyncExitStack() as owned:
            the_engine = engine
            if the_engine is None:
                the_engine = build_engine(config, geometry, metrics)
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
            gateway = Gateway(
                config, metrics, the_engine, Pipeline(config, geometry, loader, the_localizer)
            )
            app.state.gateway = gateway
            watcher = asyncio.create_task(_watch_engine(gateway, on_engine_death))
            owned.callback(watcher.cancel)
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


async def _watch_engine(gateway: Gateway, on_death: Callable[[], None] | None) -> None:
    await gateway.engine.wait_dead()
    gateway.engine_dead = True
    logger.error("the %s engine died; refusing new requests", gateway.engine.kind)
    if on_death is not None:
        await asyncio.sleep(ENGINE_DEATH_GRACE_S)
        on_death()
