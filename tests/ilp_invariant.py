"""Worker extension for ILP engine tests: checks, every ILP step, that building the kept tokens'
attention metadata leaves the stock step's metadata untouched.

Layers < K run with the stock metadata after ILP built its own in the same step; a metadata
builder with state of its own (FlashInfer's planned wrappers, FlexAttention's persistent tensors)
would let the second build overwrite what the first one returned. The check is numerics-free:
every tensor reachable from the stock metadata objects is cloned before the ILP build and must
be bit-identical after it. Used as `LLM(worker_extension_cls="tests.ilp_invariant.Checked")`;
importing this module (done by vLLM in the worker process only) installs the check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from vllm.forward_context import get_forward_context

import crop_vllm.ilp.patches.runner as ilp_runner

_MAX_DEPTH = 4
_report = {"checks": 0, "tensors": 0, "violations": []}


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


def _checked_kept_metadata(runner, state, compaction):
    stock = get_forward_context().attn_metadata
    metadata_objects = {id(m): (name, m) for name, m in stock.items()}.values()
    before = {
        f"{name}{path}": (tensor, tensor.clone())
        for name, metadata in metadata_objects
        for path, tensor in reachable_tensors(metadata).items()
    }
    result = _build_kept_metadata(runner, state, compaction)
    _report["checks"] += 1
    _report["tensors"] += len(before)
    for path, (tensor, snapshot) in before.items():
        if tensor.shape != snapshot.shape or not torch.equal(tensor, snapshot):
            _report["violations"].append(path)
    return result


ilp_runner._kept_metadata = _checked_kept_metadata


class Checked:
    """The worker extension: `llm.collective_rpc("stock_metadata_report")` reads the tally."""

    def stock_metadata_report(self) -> dict[str, Any]:
        return {**_report, "violations": list(_report["violations"])}
