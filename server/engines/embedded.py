"""The default engine: vLLM in the gateway's process, behind vLLM's own OpenAI serving layer.

The model is loaded under its CROP architecture (`hf_overrides`) by an AsyncLLM, and chat
requests go through the same `OpenAIServingChat` that `vllm serve` runs (built by vLLM's own
`init_app_state` from `vllm serve`'s argument defaults), so prompts, sampling, tools, response
formats, defaults and errors are exactly vLLM's. Images arrive decoded (`image_pil` parts);
the CROP plan travels in `mm_processor_kwargs`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from server.engines import (
    EngineRequest,
    EngineStatus,
    EngineUnavailable,
    KvCacheFacts,
    Response,
    ServedModel,
    refusal,
)
from server.engines.vllm_api import VLLM_VERSION, replace_images
from server.sse import achunks

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

#: How often the engine's liveness is checked for `wait_dead`.
DEATH_POLL_S = 0.5


class EmbeddedEngine:
    """AsyncLLM on `model`; `engine_args` are extra `AsyncEngineArgs` fields (dtype, ...)."""

    kind = "embedded"

    def __init__(
        self,
        model: str,
        *,
        served_model_name: str,
        hf_overrides: Mapping[str, object],
        max_images: int,
        engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.served_model_name = served_model_name
        self._hf_overrides = dict(hf_overrides)
        self._max_images = max_images
        self._engine_args = dict(engine_args or {})
        self._llm: Any = None
        self._serving: Any = None
        self._models: Any = None
        self._kv_cache: KvCacheFacts | None = None

    async def start(self) -> None:
        from starlette.datastructures import State
        from vllm import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        args = {
            "model": self.model,
            "hf_overrides": self._hf_overrides,
            "limit_mm_per_prompt": {"image": self._max_images},
            "disable_log_stats": False,  # as vllm serve: vLLM's metrics, on the gateway's /metrics
            **self._engine_args,
        }
        logger.info("starting the embedded vLLM engine: %s", args)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        config = self._llm.vllm_config  # block size as the engine core settled it
        self._kv_cache = KvCacheFacts(
            block_size=config.cache_config.block_size,
            cache_dtype=str(config.cache_config.cache_dtype),
            model_dtype=str(config.model_config.dtype).removeprefix("torch."),
        )
        serve_args = make_arg_parser(FlexibleArgumentParser()).parse_args(
            [
                "--model", self.model,
                "--served-model-name", self.served_model_name,
                "--trust-request-mm-kwargs",  # the CROP plan travels in mm_processor_kwargs
                "--enable-prompt-tokens-details",  # image tokens, for the gateway's check
            ]
        )  # fmt: skip
        state = State()
        await init_app_state(self._llm, state, serve_args, await self._llm.get_supported_tasks())
        self._serving = state.openai_serving_chat
        self._models = state.openai_serving_models

    async def aclose(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    async def status(self) -> EngineStatus:
        if self._llm is None:
            return EngineStatus(False, {"kind": self.kind, "error": "not started"})
        try:
            await self._llm.check_health()
        except Exception as exc:
            return EngineStatus(False, {"kind": self.kind, "error": str(exc) or "engine dead"})
        return EngineStatus(
            True,
            {"kind": self.kind, "outstanding": self._llm.get_num_unfinished_requests()},
        )

    async def served_model(self) -> ServedModel:
        cards = (await self._models.show_available_models()).data
        return ServedModel(cards[0].root, cards[0].max_model_len)

    def vllm_versions(self) -> list[str]:
        return [VLLM_VERSION]

    def engine_metrics(self) -> bytes:
        from prometheus_client import generate_latest
        from vllm.v1.metrics.prometheus import get_prometheus_registry

        registry = get_prometheus_registry()

        class VllmOnly:
            """vLLM's metric families of the registry (not the process metrics next to them)."""

            def collect(self) -> Iterator[Metric]:
                return (f for f in registry.collect() if f.name.startswith("vllm:"))

        return generate_latest(VllmOnly())  # type: ignore[arg-type]

    async def wait_dead(self) -> None:
        while self._llm is None or not self._llm.errored:
            await asyncio.sleep(DEATH_POLL_S)

    async def generate(self, request: EngineRequest) -> AsyncIterator[Response]:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import (
            create_error_response,
        )

        self._check_alive()
        request.served_by.kv_cache = self._kv_cache
        pixels = await asyncio.to_thread(lambda: [image.pixels() for image in request.images])
        vllm_request = request.request.model_copy(
            update={
                "model": self.served_model_name,
                "request_id": request.request_id,
                "messages": replace_images(
                    request.request.messages,
                    lambda n: {"type": "image_pil", "image_pil": pixels[n]},
                ),
                "mm_processor_kwargs": request.mm_processor_kwargs(),
                "stream_options": request.stream_options(),
            }
        )
        try:
            answer = await self._serving.create_chat_completion(vllm_request, None)
        except Exception as exc:  # what vllm serve's exception handlers answer
            raise self._error(create_error_response(exc).error.model_dump()) from exc
        if isinstance(answer, ErrorResponse):
            raise self._error(answer.error.model_dump())
        if not isinstance(answer, AsyncIterator):
            yield answer.model_dump()
            return
        try:
            async for chunk in achunks(answer):
                if "error" in chunk:
                    raise self._error(chunk["error"])
                yield chunk
        finally:
            await answer.aclose()  # aborts the request in vLLM when the client went away

    def _check_alive(self) -> None:
        if self._llm is None or self._llm.errored:
            raise EngineUnavailable("the engine has stopped; see the server log")

    def _error(self, error: dict[str, Any]) -> Exception:
        """vLLM's error object as the gateway's error (503 once the engine is dead)."""
        self._check_alive()
        return refusal(int(error.get("code") or 500), str(error.get("message")), error.get("param"))
