"""Class-name text embeddings for YOLO-World: a live CLIP text encoder or a precomputed file.

YOLO-World classifies boxes by similarity to CLIP ViT-B/32 text embeddings of the class names.
Ultralytics builds that encoder by downloading its weights, which this service must never do, so:

- `ClipTextEmbedder` runs the encoder from a local weights file (open vocabulary); it needs the
  `clip` package (Ultralytics' fork or OpenAI's) to be installed.
- `VocabularyEmbeddings` holds a closed vocabulary computed once where CLIP weights exist
  (`python -m crop_localizer.embed_vocab`) and saved as `.npz`: `names` (unicode array),
  `vectors` (float32, N x D, rows L2-normalised) and `encoder` (which encoder made them).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from crop_localizer.errors import LocalizerStartupError
from crop_localizer.phrases import normalize_name

CLIP_ENCODER = "clip:ViT-B/32"  # the text encoder YOLO-World v2 was trained with
_NORM_TOLERANCE = 1e-3


@runtime_checkable
class TextEmbedder(Protocol):
    """Turns class names into L2-normalised embedding rows for the detector."""

    @property
    def dim(self) -> int: ...

    @property
    def vocabulary(self) -> frozenset[str] | None:
        """The names it can embed, or None when it can embed any text."""
        ...

    def embed(self, names: Sequence[str]) -> np.ndarray:
        """(len(names), dim) float32; raises ValueError for a name outside the vocabulary."""
        ...


class VocabularyEmbeddings:
    """A closed vocabulary of precomputed embeddings, loaded from or saved to an `.npz` file."""

    def __init__(self, names: Sequence[str], vectors: np.ndarray, encoder: str = CLIP_ENCODER):
        normalized = tuple(normalize_name(name) for name in names)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not normalized:
            raise ValueError("a vocabulary needs at least one name")
        if len(set(normalized)) != len(normalized) or "" in normalized:
            raise ValueError("vocabulary names must be non-empty and unique (case-insensitive)")
        if vectors.ndim != 2 or vectors.shape[0] != len(normalized):
            raise ValueError(
                f"expected {len(normalized)} embedding rows, got an array of shape {vectors.shape}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError("embeddings contain NaN or infinity")
        norms = np.linalg.norm(vectors, axis=1)
        if np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
            raise ValueError("embedding rows must be L2-normalised")
        self.names = normalized
        self.vectors = vectors
        self.encoder = encoder
        self._rows = {name: row for row, name in enumerate(normalized)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def vocabulary(self) -> frozenset[str]:
        return frozenset(self.names)

    def embed(self, names: Sequence[str]) -> np.ndarray:
        missing = [name for name in names if name not in self._rows]
        if missing:
            raise ValueError(f"not in the embedding vocabulary: {missing}")
        return self.vectors[[self._rows[name] for name in names]]

    def save(self, path: Path) -> None:
        """Write the `.npz` file (`np.savez` would append `.npz` to other suffixes: use it)."""
        with Path(path).open("wb") as file:
            np.savez(
                file,
                names=np.array(self.names, dtype=np.str_),
                vectors=self.vectors,
                encoder=np.array(self.encoder, dtype=np.str_),
            )

    @classmethod
    def load(cls, path: Path) -> VocabularyEmbeddings:
        """Read an `.npz` file, raising `LocalizerStartupError` with the reason if unusable."""
        path = Path(path)
        if not path.is_file():
            raise LocalizerStartupError(f"vocabulary embedding file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                names = [str(name) for name in data["names"]]
                vectors = data["vectors"]
                encoder = str(data["encoder"]) if "encoder" in data else CLIP_ENCODER
            return cls(names, vectors, encoder)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise LocalizerStartupError(
                f"vocabulary embedding file {path} is unusable: {exc}. Expected an .npz with "
                f"'names' and 'vectors' written by `python -m crop_localizer.embed_vocab`"
            ) from exc


class ClipTextEmbedder:
    """Open vocabulary: CLIP ViT-B/32's text tower from a local weights file, results cached.

    Not thread-safe: the micro-batcher calls it from its single worker thread.
    """

    def __init__(self, weights: Path, device: str = "cpu"):
        weights = Path(weights)
        if not weights.is_file():
            raise LocalizerStartupError(f"CLIP weights file not found: {weights}")
        try:
            import clip  # Ultralytics' fork or OpenAI's package; never installed at run time
        except ImportError as exc:
            raise LocalizerStartupError(
                "clip_weights is set but the `clip` package is not installed; install it "
                "(Ultralytics' CLIP fork) or use a vocabulary embedding file instead"
            ) from exc
        try:
            model, _ = clip.load(str(weights), device=device, jit=False)
        except Exception as exc:  # clip.load raises whatever torch.load raised
            raise LocalizerStartupError(f"cannot load CLIP weights {weights}: {exc}") from exc
        self._model = model.eval()
        self._tokenize = clip.tokenize
        self._device = device
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self._model.text_projection.shape[1])

    @property
    def vocabulary(self) -> None:
        return None

    def embed(self, names: Sequence[str]) -> np.ndarray:
        import torch

        missing = [name for name in dict.fromkeys(names) if name not in self._cache]
        if missing:
            with torch.inference_mode():
                tokens = self._tokenize(missing).to(self._device)
                features = self._model.encode_text(tokens).float()
                features = features / features.norm(dim=-1, keepdim=True)
            for name, row in zip(missing, features.cpu().numpy(), strict=True):
                self._cache[name] = row
        return np.stack([self._cache[name] for name in names]).astype(np.float32)
