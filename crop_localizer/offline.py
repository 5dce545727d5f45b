"""Make Ultralytics safe to import in a server: no downloads, no pip installs, no telemetry,
no changes to the process's thread count or to Pillow.

Ultralytics reads these environment variables once, when it is first imported, so
`prepare_ultralytics()` must run before any `import ultralytics`; the modules of this package
that import it call it first. `YOLO_CONFIG_DIR` (where Ultralytics keeps settings.json) is kept
if already set, else pointed at a folder of this project rather than the user's config.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_config_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "crop-serving" / "ultralytics"


def prepare_ultralytics() -> None:
    """Set the offline environment, then import Ultralytics and switch off settings sync."""
    already_imported = "ultralytics" in sys.modules
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(default_config_dir()))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)

    restore_threads = not already_imported and "OMP_NUM_THREADS" not in os.environ
    # Ultralytics sets OMP_NUM_THREADS=1 on import when unset ("for training"): torch imported
    # after that runs single-threaded, and every process this one starts (engines) inherits it.
    # Importing torch first keeps its thread pool; the variable is then removed again.
    import torch

    threads = torch.get_num_threads()
    from ultralytics import utils

    if restore_threads:
        os.environ.pop("OMP_NUM_THREADS", None)
        torch.set_num_threads(threads)

    if already_imported and (utils.ONLINE or utils.AUTOINSTALL):
        raise RuntimeError(
            "ultralytics was imported before crop_localizer could switch it offline; "
            "import crop_localizer first or set YOLO_OFFLINE=1 and YOLO_AUTOINSTALL=0"
        )
    if utils.SETTINGS.get("sync", True):
        utils.SETTINGS.update(sync=False)
    _restore_pillow_open()


def _restore_pillow_open() -> None:
    """Undo Ultralytics' global patch of `PIL.Image.open`.

    On importing, Ultralytics replaces `Image.open` with a wrapper that, on the first image
    Pillow cannot identify, tries to pip-install `pi-heif` and raises `ModuleNotFoundError` when
    it may not. In a server that would let any client's junk bytes trigger an install attempt
    and turn a clean "not an image" answer into a crash, so Pillow's own function comes back.
    """
    from PIL import Image
    from ultralytics.utils import patches

    if Image.open is patches.image_open:
        Image.open = patches._image_open
