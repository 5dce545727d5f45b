"""What ILP needs from the engine, named without importing vLLM's runner or scheduler (the config
check runs in every process that builds an engine config).

- `SUPPORTED_BACKENDS`: the attention backends ILP's tests cover (CPU tests: CPU_ATTN and
  FLEX_ATTENTION; `make gpu-check`: FLASH_ATTN, TRITON_ATTN, FLASHINFER, FLEX_ATTENTION);
- `COMPACT_KV_SCHEDULER`: the scheduler the KV saving runs with (`crop_vllm.ilp.kv`).
"""

SUPPORTED_BACKENDS = frozenset(
    {"CPU_ATTN", "FLEX_ATTENTION", "FLASH_ATTN", "TRITON_ATTN", "FLASHINFER"}
)

COMPACT_KV_SCHEDULER = "crop_vllm.ilp.kv.make_scheduler"


def unsupported_backends(backend_names: set[str]) -> list[str]:
    """The backends among `backend_names` that ILP is not tested on, sorted."""
    return sorted(backend_names - SUPPORTED_BACKENDS)
