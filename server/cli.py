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
from crop_vllm.layout import CropMode
from server.app import create_app
from server.config import CropDefaults, GatewayConfig, Limits
from server.images import ImageLimits, parse_networks
from server.middleware import RequestIdFilter

logger = logging.getLogger("server.cli")

#: Engine settings that let the demo checkpoints run on a CPU-only machine (float32, eager).
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


def _flag_value(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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
    model.add_argument("--engine", choices=("embedded", "remote"), default="embedded")
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
    model.add_argument("--backend-retry-interval", type=float, default=5.0, metavar="SECONDS")

    crop = serve.add_argument_group("CROP defaults")
    crop.add_argument(
        "--crop-mode",
        choices=("auto", "off", "plc", "ilp", "plc+ilp"),
        default="auto",
        help="mode of requests without a `crop` field",
    )
    crop.add_argument(
        "--crop-default-mode",
        choices=("plc", "ilp", "plc+ilp"),
        default="plc",
        help="the pruning `auto` applies",
    )
    crop.add_argument("--crop-inside-stride", type=int, default=1)
    crop.add_argument("--crop-outside-stride", type=int, default=4)
    crop.add_argument("--crop-drop-outside", action="store_true")
    crop.add_argument("--crop-ilp-layer", type=int, default=2)
    crop.add_argument(
        "--crop-enable-ilp",
        nargs="?",
        const=True,
        default=False,
        type=_flag_value,
        metavar="BOOL",
        help="allow ILP modes (the embedded engine then runs eager, without prefix caching); "
        "a value (true/false) lets deployment files set it from a variable",
    )

    localizer = serve.add_argument_group("localizer")
    localizer.add_argument(
        "--localizer",
        choices=[k.value for k in LocalizerKind],
        help="default: yolo-world when --localizer-weights is given, else none",
    )
    localizer.add_argument("--localizer-weights", type=Path, help="yolov8*-worldv2.pt")
    localizer.add_argument("--localizer-clip-weights", type=Path)
    localizer.add_argument("--localizer-vocab-embeddings", type=Path)
    localizer.add_argument("--localizer-device", default="cpu")
    localizer.add_argument(
        "--localizer-imgsz",
        type=int,
        default=LocalizerConfig.imgsz,
        help="detector input side in px (multiple of 32): smaller is cheaper, finds less",
    )
    localizer.add_argument("--localizer-conf", type=float, default=LocalizerConfig.conf)
    localizer.add_argument(
        "--localizer-max-batch",
        type=int,
        default=LocalizerConfig.max_batch,
        help="images per detector forward",
    )
    localizer.add_argument(
        "--localizer-max-wait-ms",
        type=float,
        default=LocalizerConfig.max_wait_ms,
        help="longest wait for a detector batch to fill",
    )

    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-concurrent-requests", type=int, default=64)
    limits.add_argument("--max-images", type=int, default=4, help="images per request")
    limits.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    limits.add_argument("--max-n", type=int, default=4)
    limits.add_argument("--max-tokens", type=int, default=4096, help="largest max_tokens")
    limits.add_argument("--default-max-tokens", type=int, default=512)
    limits.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024)
    limits.add_argument("--max-image-pixels", type=int, default=40_000_000)
    limits.add_argument("--image-fetch-timeout", type=float, default=10.0, metavar="SECONDS")
    limits.add_argument("--image-max-redirects", type=int, default=3)
    limits.add_argument(
        "--allow-image-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="let image URLs reach this otherwise refused (private) network, repeatable",
    )
    limits.add_argument(
        "--no-public-image-urls",
        action="store_true",
        help="fetch image URLs only from --allow-image-network networks",
    )
    limits.add_argument("--no-image-urls", action="store_true", help="accept data: URLs only")

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
    kind = args.localizer or (
        LocalizerKind.YOLO_WORLD if args.localizer_weights else LocalizerKind.NONE
    )
    api_keys = list(args.api_key)
    api_keys += [k for k in os.environ.get("CROP_API_KEYS", "").split(",") if k.strip()]
    return GatewayConfig(
        model=model,
        served_model_name=served_name,
        engine=args.engine,
        engine_args=engine_args,
        remote_urls=tuple(args.backend),
        remote_retry_interval_s=args.backend_retry_interval,
        crop=CropDefaults(
            request_mode=args.crop_mode,
            default_mode=CropMode(args.crop_default_mode),
            inside_stride=args.crop_inside_stride,
            outside_stride=args.crop_outside_stride,
            drop_outside=args.crop_drop_outside,
            ilp_layer=args.crop_ilp_layer,
            enable_ilp=args.crop_enable_ilp,
        ),
        localizer=LocalizerConfig(
            kind=kind,
            weights=args.localizer_weights,
            clip_weights=args.localizer_clip_weights,
            vocab_embeddings=args.localizer_vocab_embeddings,
            device=args.localizer_device,
            imgsz=args.localizer_imgsz,
            conf=args.localizer_conf,
            max_batch=args.localizer_max_batch,
            max_wait_ms=args.localizer_max_wait_ms,
        ),
        limits=Limits(
            max_concurrent_requests=args.max_concurrent_requests,
            max_images=args.max_images,
            max_body_bytes=args.max_body_bytes,
            max_n=args.max_n,
            max_tokens=args.max_tokens,
            default_max_tokens=args.default_max_tokens,
        ),
        images=ImageLimits(
            max_bytes=args.max_image_bytes,
            max_pixels=args.max_image_pixels,
            timeout_s=args.image_fetch_timeout,
            max_redirects=args.image_max_redirects,
            allowed_networks=parse_networks(args.allow_image_network),
            allow_public=not args.no_public_image_urls,
            fetch_urls=not args.no_image_urls,
        ),
        api_keys=tuple(k.strip() for k in api_keys),
    )


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def serve(app: Any, args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,  # the gateway logs each request with its id
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        )
    ).run()


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
    serve(create_app(config), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
