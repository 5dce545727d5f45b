"""`crop-server serve`: the gateway from the command line.

    crop-server serve                                  # tiny random-weight demo LLaVA, embedded
    crop-server serve --model llava-hf/llava-1.5-7b-hf --engine-arg max_model_len=4096
    crop-server serve --model DIR --engine remote --backend http://127.0.0.1:8001

Without `--model` a tiny checkpoint with RANDOM weights is built locally (nothing downloaded) in
the cache folder and served: its answers are gibberish, but every part of the path runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crop_localizer import LocalizerConfig, LocalizerKind
from crop_vllm.families import MODEL_TYPES, family
from server.app import create_app
from server.config import CropDefaults, GatewayConfig, Limits
from server.flags import add_flags, crop_setting_flags, crop_settings, flag_values
from server.images import ImageLimits
from server.middleware import RequestIdFilter
from server.protocol import REQUEST_MODES

logger = logging.getLogger("server.cli")

#: Engine settings of the tiny random-weight demo checkpoints, for CPU-only machines: float32,
#: and eager because it starts faster and a model that exists to exercise the path gains
#: nothing from compilation. A real `--model` runs with vLLM's defaults (compiled).
DEMO_ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}


def demo_dir() -> Path:
    root = os.environ.get("CROP_CACHE_DIR") or Path.home() / ".cache" / "crop-serving"
    return Path(root) / "demo"


def _engine_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crop-server", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible gateway",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    model = serve.add_argument_group("model and engine")
    model.add_argument(
        "--model",
        help="checkpoint folder or hub id; omitted: build and serve a tiny RANDOM-weight demo "
        "checkpoint (no download)",
    )
    model.add_argument("--demo-arch", choices=MODEL_TYPES, default="llava")
    model.add_argument("--served-model-name", help="name clients use (default: --model)")
    model.add_argument(
        "--engine-arg",
        action="append",
        type=_engine_arg,
        default=[],
        metavar="KEY=VALUE",
        help="extra vLLM AsyncEngineArgs field for the embedded engine (JSON value), repeatable",
    )
    model.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="URL",
        help="`vllm serve` URL for the remote engine (run with --trust-request-mm-kwargs and "
        "the same CROP settings), repeatable",
    )
    add_flags(model, GatewayConfig)

    crop = serve.add_argument_group("CROP settings (shared with the engine)")
    crop.add_argument(
        "--crop-mode",
        choices=REQUEST_MODES,
        default=CropDefaults.request_mode,
        help="mode of requests without a `crop` field",
    )
    crop_setting_flags(crop)

    localizer = serve.add_argument_group("localizer")
    localizer.add_argument(
        "--localizer",
        choices=[k.value for k in LocalizerKind],
        help="default: yolo-world when --localizer-weights is given, else none",
    )
    add_flags(localizer, LocalizerConfig)

    limits = serve.add_argument_group("limits")
    add_flags(limits, Limits)
    add_flags(limits, ImageLimits)

    server = serve.add_argument_group("server")
    server.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted Bearer key, repeatable (also CROP_API_KEYS, comma-separated)",
    )
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long shutdown waits for in-flight requests",
    )
    server.add_argument("--log-level", default="info")
    return parser


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """Validate the flags into a `GatewayConfig` (demo checkpoint built when no model given)."""
    engine_args = dict(args.engine_arg)
    model, served_name = args.model, args.served_model_name
    if model is None:
        from crop_vllm.testing.tiny_models import build_tiny_model

        model = str(build_tiny_model(args.demo_arch, demo_dir() / args.demo_arch))
        served_name = served_name or f"crop-demo-{args.demo_arch}"
        # The demo's own InternVL config module is the remote code InternVL needs.
        remote_code = {"trust_remote_code": family(args.demo_arch).remote_code}
        engine_args = {**DEMO_ENGINE_ARGS, **remote_code, **engine_args}
        logger.warning("no --model: serving the tiny RANDOM-weight demo checkpoint %s", model)
    localizer = flag_values(LocalizerConfig, args)
    kind = args.localizer or (
        LocalizerKind.YOLO_WORLD if localizer["weights"] else LocalizerKind.NONE
    )
    api_keys = list(args.api_key)
    api_keys += [k for k in os.environ.get("CROP_API_KEYS", "").split(",") if k.strip()]
    return GatewayConfig(
        model=model,
        served_model_name=served_name,
        engine_args=engine_args,
        remote_urls=tuple(args.backend),
        crop=CropDefaults(crop_settings(args), args.crop_mode),
        localizer=LocalizerConfig(kind=kind, **localizer),
        limits=Limits(**flag_values(Limits, args)),
        images=ImageLimits(**flag_values(ImageLimits, args)),
        api_keys=tuple(k.strip() for k in api_keys),
        **flag_values(GatewayConfig, args),
    )


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def serve(config: GatewayConfig, args: argparse.Namespace) -> int:
    """Run the gateway until it is stopped (0) or its engine dies (1, so that an orchestrator
    restarts it)."""
    import uvicorn

    engine_died = False

    def stop_for_engine_death() -> None:
        nonlocal engine_died
        engine_died = True
        server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, on_engine_death=stop_for_engine_death),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,  # the gateway logs each request with its id
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        )
    )
    server.run()
    if engine_died:
        logger.error("exiting: the engine died")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    # The demo runs on CPU-only machines too; these only matter to vLLM's CPU backend.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"crop-server: {exc}", file=sys.stderr)
        return 2
    return serve(config, args)


if __name__ == "__main__":
    sys.exit(main())
