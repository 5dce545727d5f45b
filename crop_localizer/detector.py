"""YOLO-World v2 as a batched detector with a class list per image.

Follows the split of Ultralytics' predictor (preprocess: letterbox and stack; inference;
postprocess: NMS and scaling back) but drives `WorldModel.predict` directly, because the
predictor holds one class list for the whole batch. Here each image brings its own prompts:
the lists are padded to the batch's longest by repeating the image's own first embedding (the
neck takes a max over classes, which ignores duplicates), and the padded score rows are zeroed
before NMS, so a batched image gets the same boxes as it would alone, up to float noise.

Images are letterboxed to a fixed square (`imgsz`), never to the batch's minimal rectangle, so
an image's input tensor does not depend on its batch companions either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crop_localizer.offline import prepare_ultralytics

prepare_ultralytics()

import torch  # noqa: E402
import torchvision  # noqa: E402, F401  (Ultralytics' NMS uses its kernel only once imported)
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.nn.tasks import WorldModel, load_checkpoint  # noqa: E402
from ultralytics.utils.nms import non_max_suppression  # noqa: E402
from ultralytics.utils.ops import scale_boxes  # noqa: E402

from crop_localizer.errors import LocalizerStartupError  # noqa: E402
from crop_localizer.results import Detection  # noqa: E402
from crop_localizer.text_embeddings import VocabularyEmbeddings  # noqa: E402
from crop_localizer.vocabulary import COCO_NAMES  # noqa: E402
from crop_vllm.layout import Region  # noqa: E402


@dataclass(frozen=True, eq=False)
class ClassPrompts:
    """One image's class names and their L2-normalised text embeddings, (len(names), dim)."""

    names: tuple[str, ...]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("an image needs at least one class prompt")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.names):
            raise ValueError(
                f"{len(self.names)} names but embeddings of shape {self.embeddings.shape}"
            )


class YoloWorldDetector:
    """A loaded YOLO-World model plus its pre- and postprocessing.

    Not thread-safe (the head's class count is set per call): the micro-batcher runs it on a
    single worker thread. Half precision applies on GPUs only; on CPU the model stays fp32.
    """

    def __init__(
        self,
        model: WorldModel,
        *,
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 100,
        device: str = "cpu",
        half: bool = False,
    ):
        if not isinstance(model, WorldModel):
            raise LocalizerStartupError(f"expected a YOLO-World model, got {type(model).__name__}")
        self.device = torch.device(device)
        self.half = half and self.device.type != "cpu"
        self.stride = int(max(model.stride))
        if imgsz <= 0 or imgsz % self.stride:
            raise ValueError(f"imgsz must be a positive multiple of {self.stride}, got {imgsz}")
        self.imgsz = imgsz
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        model = model.fuse(verbose=False).eval().to(self.device)
        self.model = model.half() if self.half else model.float()
        self._letterbox = LetterBox(imgsz, auto=False, stride=self.stride)

    @classmethod
    def from_weights(cls, path: Path, **settings: Any) -> YoloWorldDetector:
        """Load `yolov8{s,m,l,x}-worldv2.pt` from a local path; never downloads. `settings` are
        the constructor's keywords (imgsz, conf, iou, max_det, device, half).

        Raises `LocalizerStartupError` naming the file for a missing, unreadable or non-YOLO-World
        checkpoint, so the service fails at startup rather than on the first request.
        """
        path = Path(path).expanduser().resolve()  # absolute: Ultralytics only fetches bare names
        if not path.is_file():
            raise LocalizerStartupError(f"YOLO-World weights not found: {path}")
        if path.suffix != ".pt":
            raise LocalizerStartupError(f"YOLO-World weights must be a .pt checkpoint: {path}")
        try:
            model, _ = load_checkpoint(str(path), device="cpu")
        except Exception as exc:  # torch and Ultralytics raise many types for a bad file
            raise LocalizerStartupError(
                f"cannot load YOLO-World weights {path}: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(model, WorldModel):
            raise LocalizerStartupError(
                f"{path} holds a {type(model).__name__}, not a YOLO-World (WorldModel) checkpoint"
            )
        return cls(model, **settings)

    @property
    def embed_dim(self) -> int:
        """Width of the text embeddings the head expects (512 for CLIP ViT-B/32)."""
        return int(self.model.model[-1].cv3[0][-1].out_channels)

    def builtin_vocabulary(self) -> VocabularyEmbeddings | None:
        """The class embeddings saved inside the checkpoint, if it names its classes.

        Official checkpoints carry CLIP embeddings of the 80 COCO names; ones without a `names`
        attribute get COCO's, as Ultralytics' YOLOWorld assumes. Placeholder names ("0", "1", ...)
        of a model built from a YAML mean there is no usable vocabulary.
        """
        features = getattr(self.model, "txt_feats", None)
        if features is None:
            return None
        vectors = features.detach().float().cpu().reshape(-1, features.shape[-1]).numpy()
        names_attr = getattr(self.model, "names", None)
        names = list(names_attr.values()) if isinstance(names_attr, dict) else names_attr
        if names is None and len(vectors) == len(COCO_NAMES):
            names = list(COCO_NAMES)
        if not names or len(names) != len(vectors) or all(str(n).isdigit() for n in names):
            return None
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return VocabularyEmbeddings([str(n) for n in names], vectors / norms)

    def detect(
        self, images: Sequence[Image.Image], prompts: Sequence[ClassPrompts]
    ) -> list[list[Detection]]:
        """Detections per image, each image matched only against its own prompts."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompt lists")
        if not images:
            return []
        with torch.inference_mode():
            x = self.preprocess(images)
            preds = self.inference(x, self.pad_prompts(prompts))
            return self.postprocess(preds, prompts, [(im.height, im.width) for im in images])

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Letterbox each RGB image to imgsz x imgsz and stack: (B, 3, imgsz, imgsz) in [0, 1]."""
        rgb = [np.asarray(im if im.mode == "RGB" else im.convert("RGB")) for im in images]
        boxed = np.stack([self._letterbox(image=pixels) for pixels in rgb])
        x = torch.from_numpy(boxed).permute(0, 3, 1, 2).contiguous().to(self.device)
        return (x.half() if self.half else x.float()) / 255.0

    def pad_prompts(self, prompts: Sequence[ClassPrompts]) -> torch.Tensor:
        """Stack per-image embeddings to (B, N, dim), padding with each image's first row."""
        width = max(len(p.names) for p in prompts)
        rows = []
        for p in prompts:
            padding = np.repeat(p.embeddings[:1], width - len(p.names), axis=0)
            rows.append(np.concatenate([p.embeddings, padding]))
        return torch.from_numpy(np.stack(rows).astype(np.float32)).to(self.device)

    def inference(self, x: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """Raw predictions (B, 4 + N, anchors): xywh boxes in letterbox pixels, class scores."""
        self.model.model[-1].nc = class_embeddings.shape[1]
        return self.model.predict(x, txt_feats=class_embeddings)[0]

    def postprocess(
        self,
        preds: torch.Tensor,
        prompts: Sequence[ClassPrompts],
        shapes: Sequence[tuple[int, int]],
    ) -> list[list[Detection]]:
        """Mask padded classes, run NMS per image, scale boxes back and normalise them."""
        preds = preds.float().clone()
        for i, p in enumerate(prompts):
            preds[i, 4 + len(p.names) :] = 0.0  # padded duplicates must never win a box
        # No time limit: Ultralytics' NMS otherwise stops after ~2 s (easily reached on a busy
        # CPU) and silently returns nothing for the rest of the batch.
        kept = non_max_suppression(
            preds,
            conf_thres=self.conf,
            iou_thres=self.iou,
            max_det=self.max_det,
            max_time_img=math.inf,
        )
        results = []
        for found, p, (height, width) in zip(kept, prompts, shapes, strict=True):
            boxes = scale_boxes((self.imgsz, self.imgsz), found[:, :4].clone(), (height, width))
            results.append(
                [
                    Detection(
                        label=p.names[int(cls)],
                        confidence=float(conf),
                        box=Region(
                            min(x0 / width, 1.0),
                            min(y0 / height, 1.0),
                            min(x1 / width, 1.0),
                            min(y1 / height, 1.0),
                        ),
                    )
                    for (x0, y0, x1, y1), conf, cls in zip(
                        boxes.tolist(), found[:, 4].tolist(), found[:, 5].tolist(), strict=True
                    )
                ]
            )
        return results
