"""The attention backends ILP runs on: the ones its tests cover (CPU tests: CPU_ATTN and
FLEX_ATTENTION; `make gpu-check`: FLASH_ATTN, TRITON_ATTN, FLASHINFER, FLEX_ATTENTION).

A separate module so that the config check can name them without importing the model runner.
"""

SUPPORTED_BACKENDS = frozenset(
    {"CPU_ATTN", "FLEX_ATTENTION", "FLASH_ATTN", "TRITON_ATTN", "FLASHINFER"}
)


def unsupported_backends(backend_names: set[str]) -> list[str]:
    """The backends among `backend_names` that ILP is not tested on, sorted."""
    return sorted(backend_names - SUPPORTED_BACKENDS)
