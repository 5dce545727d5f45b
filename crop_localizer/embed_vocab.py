"""Precompute the vocabulary embedding file on a machine that has CLIP weights.

    python -m crop_localizer.embed_vocab --clip-weights ViT-B-32.pt --out vocab.npz [--names FILE]

Embeds `vocabulary.OBJECT_NAMES` (or the names in FILE, one per line) with CLIP ViT-B/32's text
encoder, the one YOLO-World v2 was trained with, and saves them for `vocab_embeddings=`. Serving
machines then need neither the CLIP weights nor the `clip` package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crop_localizer.errors import LocalizerStartupError
from crop_localizer.phrases import normalize_name
from crop_localizer.vocabulary import OBJECT_NAMES


def read_names(path: Path | None) -> list[str]:
    """Names from a file (blank lines and '#' comments skipped), or the default vocabulary."""
    if path is None:
        return list(OBJECT_NAMES)
    lines = (line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(normalize_name(line) for line in lines if line.strip()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crop_localizer.embed_vocab", description=__doc__
    )
    parser.add_argument("--clip-weights", type=Path, required=True, help="local ViT-B-32.pt")
    parser.add_argument("--out", type=Path, required=True, help="output .npz file")
    parser.add_argument("--names", type=Path, help="file with one class name per line")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from crop_localizer.text_embeddings import ClipTextEmbedder, VocabularyEmbeddings

    try:
        names = read_names(args.names)
        embedder = ClipTextEmbedder(args.clip_weights, device=args.device)
        vocabulary = VocabularyEmbeddings(names, embedder.embed(names))
    except (LocalizerStartupError, OSError, ValueError) as exc:
        print(f"embed_vocab: {exc}", file=sys.stderr)
        return 1
    vocabulary.save(args.out)
    print(f"wrote {len(names)} embeddings ({vocabulary.dim}-d) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
