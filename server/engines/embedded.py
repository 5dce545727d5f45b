"""The default engine: vLLM's AsyncLLM inside the gateway's process, so one command serves.

The model is loaded under its CROP architecture (`hf_overrides`), chat prompts are rendered with
the tokenizer's chat template, and each request's CROP plan travels as `mm_processor_kwargs`.
This is the only module of `server/` that imports vLLM, through its public API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from server.engines import (
    ChoiceDelta,
    EngineBadRequest,
    EngineEvent,
    EngineRequest,
    EngineStatus,
    EngineUnavailable,
    TokenLogprob,
    TopLogprob,
)

logger = logging.getLogger(__name__)


class EmbeddedEngine:
    """AsyncLLM on `model`; `engine_args` are extra `AsyncEngineArgs` fields (dtype, ...)."""

    kind = "embedded"

    def __init__(
        self,
        model: str,
        *,
        hf_overrides: Mapping[str, object],
        max_images: int,
        engine_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self._hf_overrides = dict(hf_overrides)
        self._max_images = max_images
        self._engine_args = dict(engine_args or {})
        self._llm: Any = None
        self._tokenizer: Any = None

    async def start(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = {
            "model": self.model,
            "hf_overrides": self._hf_overrides,
            "limit_mm_per_prompt": {"image": self._max_images},
            "disable_log_stats": True,
            **self._engine_args,
        }
        logger.info("starting the embedded vLLM engine: %s", args)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self._tokenizer = self._llm.get_tokenizer()

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
            return EngineStatus(False, {"kind": self.kind, "error": str(exc)})
        return EngineStatus(
            True,
            {"kind": self.kind, "outstanding": self._llm.get_num_unfinished_requests()},
        )

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The chat template's text, with the family's image placeholders."""
        return self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineUnavailable("the engine is not running")
        options = request.sampling
        try:
            params = SamplingParams(
                n=options.n,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                seed=options.seed,
                stop=list(options.stop),
                presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty,
                logprobs=options.top_logprobs,
                output_kind=RequestOutputKind.DELTA,
            )
        except (ValueError, VLLMClientError) as exc:
            raise EngineBadRequest(str(exc)) from None
        prompt: dict[str, Any] = {"prompt": self.render_prompt(request.messages)}
        if request.images:
            pixels = await asyncio.to_thread(lambda: [i.pixels() for i in request.images])
            prompt["multi_modal_data"] = {"image": pixels}
        if request.mm_kwargs:
            prompt["mm_processor_kwargs"] = dict(request.mm_kwargs)

        completion_tokens = 0
        try:
            # Like `vllm serve` for chat: the template writes the special tokens itself.
            async for output in self._llm.generate(
                prompt,
                params,
                request.request_id,
                tokenization_kwargs={"add_special_tokens": False},
            ):
                deltas = tuple(
                    ChoiceDelta(
                        index=c.index,
                        text=c.text,
                        logprobs=_logprobs(c, options.top_logprobs),
                        finish_reason=c.finish_reason,
                    )
                    for c in output.outputs
                )
                completion_tokens += sum(len(c.token_ids) for c in output.outputs)
                if output.finished:
                    yield EngineEvent(deltas, len(output.prompt_token_ids), completion_tokens)
                else:
                    yield EngineEvent(deltas)
        except EngineDeadError:
            raise EngineUnavailable("the engine has stopped; see the server log") from None
        except VLLMClientError as exc:
            raise EngineBadRequest(str(exc)) from None
        except Exception as exc:
            cause = _value_error_cause(exc)
            if cause is not None:
                raise EngineBadRequest(str(cause)) from None
            raise


def _value_error_cause(exc: BaseException) -> ValueError | None:
    """The ValueError behind a failed generation (input processing, CROP's options), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ValueError):
            return seen
        seen = seen.__cause__
    return None


def _logprobs(completion: Any, top_logprobs: int | None) -> tuple[TokenLogprob, ...] | None:
    if top_logprobs is None or completion.logprobs is None:
        return None
    entries = []
    for token_id, candidates in zip(completion.token_ids, completion.logprobs, strict=True):
        chosen = candidates[token_id]
        ranked = sorted(
            (c for c in candidates.values() if c.rank is not None and c.rank <= top_logprobs),
            key=lambda c: c.rank,
        )
        entries.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=chosen.logprob,
                top=tuple(TopLogprob(c.decoded_token or "", c.logprob) for c in ranked),
            )
        )
    return tuple(entries)
