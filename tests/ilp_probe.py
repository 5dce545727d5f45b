"""Worker extension that checks ILP's metadata isolation inside the worker process (tests only).

Installed with `LLM(worker_extension_cls="tests.ilp_probe.IlpProbe")`: vLLM imports this module
in the worker process, and importing it wraps the ILP metadata build there, to check that every
tensor reachable from the stock step's metadata is bit-identical after ILP built its own. Layers
< K run with the stock metadata after that build, so a shared stateful builder (FlashInfer's
planned wrappers, FlexAttention's persistent tensors) would fail the check; it is numerics-free.
It also records how many tokens each compacted step kept, so that tests can show they ran the
edge cases (a step that keeps none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from vllm.forward_context import get_forward_context

import crop_vllm.ilp.patches.runner as ilp_runner

_MAX_DEPTH = 4
_report: dict[str, Any] = {"checks": 0, "tensors": 0, "violations": [], "kept_tokens": []}


def reachable_tensors(
    obj: Any, path: str = "", depth: int = 0, seen=None
) -> dict[str, torch.Tensor]:
    """Every tensor reachable from `obj` through attributes, dataclass fields and containers."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    if depth > _MAX_DEPTH or id(obj) in seen or isinstance(obj, str | bytes | int | float | bool):
        return {}
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, list | tuple):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif dataclasses.is_dataclass(obj):
        items = [(f"{path}.{f.name}", getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module | type):
        items = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
    else:
        items = []
    found: dict[str, torch.Tensor] = {}
    for sub_path, value in items:
        found.update(reachable_tensors(value, sub_path, depth + 1, seen))
    return found


_build_kept_metadata = ilp_runner._kept_metadata


def _checked_kept_metadata(runner, state, compaction, ilp):  # type: ignore[no-untyped-def]
    stock = get_forward_context().attn_metadata
    metadata_objects = {id(m): (name, m) for name, m in stock.items()}.values()
    before = {
        f"{name}{path}": (tensor, tensor.clone())
        for name, metadata in metadata_objects
        for path, tensor in reachable_tensors(metadata).items()
    }
    result = _build_kept_metadata(runner, state, compaction, ilp)
    _report["checks"] += 1
    _report["tensors"] += len(before)
    for path, (tensor, snapshot) in before.items():
        if tensor.shape != snapshot.shape or not torch.equal(tensor, snapshot):
            _report["violations"].append(path)
    return result


ilp_runner._kept_metadata = _checked_kept_metadata

_compact_step = ilp_runner.compact_step


def _recorded_compact_step(*args, **kwargs):  # type: ignore[no-untyped-def]
    compaction = _compact_step(*args, **kwargs)
    if compaction is not None:
        _report["kept_tokens"].append(compaction.num_tokens)
    return compaction


ilp_runner.compact_step = _recorded_compact_step


class IlpProbe:
    """The worker extension: RPC methods reading and steering the probe."""

    def ilp_probe_report(self) -> dict[str, Any]:
        return {
            key: list(value)
            if isinstance(value, list)
            else dict(value)
            if isinstance(value, dict)
            else value
            for key, value in _report.items()
        }
