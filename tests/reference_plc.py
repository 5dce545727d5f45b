"""A plain transformers + PyTorch implementation of PLC, to check the vLLM plugin against.

It shares only the pure layout math (`crop_vllm.layout`) with the plugin: image features come
from transformers' own modules, pooling is a per-token mean, placement, M-RoPE positions, the
DeepStack injection and greedy decoding are written out here. Runs in float32 on CPU.

InternVL chat checkpoints: their remote-code model class is not available offline, so the
reference runs transformers' native InternVL model (the same architecture) on the checkpoint's
weights, renamed key by key (`crop_vllm.testing.tiny_models.load_transformers_model`); the tiling
and pixel preprocessing (the published dynamic-resolution recipe) are written out here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from crop_vllm.layout import (
    CellBox,
    Layout,
    PLCSettings,
    Region,
    build_layout,
    build_layout_in_box,
    snap_to_grid,
)
from crop_vllm.testing.tiny_models import QWEN3_FAMILIES, QWEN_FAMILIES, load_transformers_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]
    #: Per step, the log-prob gap between the best and the second-best token (where recorded):
    #: how much numeric noise the step's greedy choice can take.
    margins: list[float] = field(default_factory=list)


def mean_pool(features: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Each kept token is the plain mean of the cells it covers."""
    return torch.stack([features[list(token.cells)].mean(0) for token in layout.tokens])


def with_newlines(tokens: torch.Tensor, layout: Layout, newline: torch.Tensor) -> torch.Tensor:
    rows: dict[int, list[torch.Tensor]] = {}
    for vector, token in zip(tokens, layout.tokens, strict=True):
        rows.setdefault(token.row, []).append(vector)
    return torch.stack([v for row in sorted(rows) for v in [*rows[row], newline]])


def internvl_tiling(width: int, height: int, tile: int, max_tiles: int) -> tuple[int, int]:
    """(tile rows, tile cols): the aspect ratio closest to the image's among those with at most
    `max_tiles` tiles; on a tie the larger one when the image has over half its pixels."""
    ratios = {
        (cols, rows)
        for n in range(1, max_tiles + 1)
        for cols in range(1, n + 1)
        for rows in range(1, n + 1)
        if cols * rows <= max_tiles
    }
    best, best_diff = (1, 1), math.inf
    for cols, rows in sorted(ratios, key=lambda r: r[0] * r[1]):
        diff = abs(width / height - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best[1], best[0]


def to_pixels(picture: Image.Image) -> torch.Tensor:
    """(3, H, W) float32, scaled to 0..1 and normalized with the ImageNet mean and std."""
    array = torch.from_numpy(np.asarray(picture.convert("RGB"))).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (array - mean) / std


class ReferencePLC:
    def __init__(self, arch: str, checkpoint: Path, settings: PLCSettings) -> None:
        self.arch = arch
        self.checkpoint = Path(checkpoint)
        self.settings = settings
        self.model = load_transformers_model(arch, checkpoint)
        self.processor = (
            AutoTokenizer.from_pretrained(checkpoint)
            if arch == "internvl_chat"
            else AutoProcessor.from_pretrained(checkpoint)
        )
        self.config = self.model.config
        self.image_token_id = self.config.image_token_id
        #: Qwen3-VL: per DeepStack level, the pruned level features of each image.
        self.deepstack: list[list[torch.Tensor]] = []

    # -- image features, pruned, one tensor per image ------------------------------------------

    @torch.no_grad()
    def image_tokens(self, images, regions: list[Region | None]) -> list[torch.Tensor]:
        family = "qwen3_vl" if self.arch in QWEN3_FAMILIES else self.arch
        return getattr(self, f"_{family}_tokens")(images, regions)

    def _layout(self, rows: int, cols: int, region: Region | None) -> Layout:
        return build_layout(rows, cols, region, self.settings)

    def _llava_tokens(self, images, regions):
        pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        features = self.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
        ).pooler_output
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        return [
            mean_pool(f, self._layout(side, side, r))
            for f, r in zip(features, regions, strict=True)
        ]

    def _llava_next_tokens(self, images, regions):
        processed = self.processor.image_processor(images, return_tensors="pt")
        pixels, image_sizes = processed["pixel_values"], processed["image_sizes"]
        vision = self.config.vision_config
        counts = [
            image_size_to_num_patches(size, self.config.image_grid_pinpoints, vision.image_size)
            for size in image_sizes
        ]
        stacked = torch.cat([p[:n] for p, n in zip(pixels, counts, strict=True)])
        hidden = self.model.model.vision_tower(stacked, output_hidden_states=True).hidden_states
        selected = hidden[self.config.vision_feature_layer][:, 1:]
        per_image = torch.split(self.model.model.multi_modal_projector(selected), counts)
        side = vision.image_size // vision.patch_size
        newline = self.model.model.image_newline
        out = []
        for features, size, region in zip(per_image, image_sizes, regions, strict=True):
            base = mean_pool(features[0], self._layout(side, side, region))
            tiles_h, tiles_w = get_anyres_image_grid_shape(
                size.tolist(), self.config.image_grid_pinpoints, vision.image_size
            )
            grid = features[1:].view(tiles_h, tiles_w, side, side, -1)
            grid = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
            grid = unpad_image(grid, size)  # (D, rows, cols)
            _, rows, cols = grid.shape
            layout = self._layout(rows, cols, region)
            tiles = mean_pool(grid.flatten(1).T, layout)
            out.append(torch.cat([base, with_newlines(tiles, layout, newline)]))
        return out

    def _qwen2_5_vl_tokens(self, images, regions):
        processed = self.processor.image_processor(images=images, return_tensors="pt")
        pixels, grid_thw = processed["pixel_values"], processed["image_grid_thw"]
        features = self.model.model.get_image_features(pixels, grid_thw).pooler_output
        merge = self.config.vision_config.spatial_merge_size
        self._qwen_grids = [(int(h) // merge, int(w) // merge) for _, h, w in grid_thw]
        return [
            mean_pool(f, self._layout(h, w, r))
            for f, (h, w), r in zip(features, self._qwen_grids, regions, strict=True)
        ]

    def _qwen3_vl_tokens(self, images, regions):
        """Main features pooled; each DeepStack level pooled with the same layout, kept aside."""
        processed = self.processor.image_processor(images=images, return_tensors="pt")
        pixels, grid_thw = processed["pixel_values"], processed["image_grid_thw"]
        output = self.model.model.get_image_features(pixels, grid_thw)
        merge = self.config.vision_config.spatial_merge_size
        self._qwen_grids = [(int(h) // merge, int(w) // merge) for _, h, w in grid_thw]
        layouts = [
            self._layout(h, w, r) for (h, w), r in zip(self._qwen_grids, regions, strict=True)
        ]
        self.deepstack = [
            [mean_pool(f, layout) for f, layout in zip(level, layouts, strict=True)]
            for level in output.deepstack_features
        ]
        features = output.pooler_output
        return [mean_pool(f, layout) for f, layout in zip(features, layouts, strict=True)]

    def _internvl_chat_tokens(self, images, regions):
        """Per image: each tile's 8x8 (or 16x16) features pooled with the region's lattice cells
        in that tile, tile by tile, then the thumbnail's pooled with the region."""
        vision = self.config.vision_config
        tile = vision.image_size[0]
        side = round(tile // vision.patch_size[0] * self.config.downsample_ratio)
        # The tiny checkpoints tile with min_dynamic_patch 1 and a thumbnail.
        max_tiles = json.loads((self.checkpoint / "config.json").read_text())["max_dynamic_patch"]
        out = []
        for image, region in zip(images, regions, strict=True):
            rows, cols = internvl_tiling(image.width, image.height, tile, max_tiles)
            resized = image.resize((cols * tile, rows * tile))
            pictures = [
                resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
                for r in range(rows)
                for c in range(cols)
            ]
            if rows * cols > 1:
                pictures.append(image.resize((tile, tile)))  # the thumbnail
            features = self.model.model.get_image_features(
                pixel_values=torch.stack([to_pixels(p) for p in pictures]),
                vision_feature_layer=self.config.vision_feature_layer,
                vision_feature_select_strategy=self.config.vision_feature_select_strategy,
            ).pooler_output
            boxes = [
                self._tile_box(region, rows * side, cols * side, r * side, c * side, side)
                for r in range(rows)
                for c in range(cols)
            ]
            if rows * cols > 1:
                boxes.append(None if region is None else snap_to_grid(region, side, side))
            pooled = [
                f
                if region is None
                else mean_pool(f, build_layout_in_box(side, side, box, self.settings))
                for f, box in zip(features, boxes, strict=True)
            ]
            out.append(torch.cat(pooled))
        return out

    @staticmethod
    def _tile_box(
        region: Region | None, lattice_rows: int, lattice_cols: int, row0: int, col0: int, side: int
    ) -> CellBox | None:
        """The tile's cells of the region snapped on the whole lattice (None: none)."""
        if region is None:
            return None
        box = snap_to_grid(region, lattice_rows, lattice_cols)
        rows = range(max(box.row0, row0), min(box.row1, row0 + side))
        cols = range(max(box.col0, col0), min(box.col1, col0 + side))
        if not rows or not cols:
            return None
        return CellBox(rows.start - row0, cols.start - col0, rows.stop - row0, cols.stop - col0)

    # -- prompt assembly and greedy decoding -----------------------------------------------------

    def unpruned_prompt(self, prompt_ids: list[int], images) -> list[int]:
        """`prompt_ids` with each image's run of placeholder tokens at its unpruned length."""
        full = [t.shape[0] for t in self.image_tokens(images, [None] * len(images))]
        out: list[int] = []
        index = 0
        while index < len(prompt_ids):
            if prompt_ids[index] != self.image_token_id:
                out.append(prompt_ids[index])
                index += 1
                continue
            while index < len(prompt_ids) and prompt_ids[index] == self.image_token_id:
                index += 1
            out += [self.image_token_id] * full.pop(0)
        assert not full, "fewer placeholder runs than images"
        return out

    def deepstack_rows(self, ids: list[int], length: int) -> list[torch.Tensor]:
        """Qwen3-VL: per DeepStack level, a (length, hidden) tensor holding the pruned level
        features at the image tokens and zeros elsewhere (what the model adds after layer i)."""
        is_image = torch.zeros(length, dtype=torch.bool)
        is_image[: len(ids)] = torch.tensor(ids) == self.image_token_id
        rows = []
        for level in self.deepstack:
            values = torch.zeros(length, self.config.text_config.hidden_size)
            values[is_image] = torch.cat(level)
            rows.append(values)
        return rows

    def _positions(self, ids: list[int], regions: list[Region | None]) -> torch.Tensor:
        """Position ids for the prompt: 1-D for LLaVA and InternVL, 3 x L M-RoPE for Qwen."""
        if self.arch not in QWEN_FAMILIES:
            return torch.arange(len(ids))[None]
        rows: list[list[int]] = [[], [], []]
        next_pos, i, image = 0, 0, 0
        while i < len(ids):
            if ids[i] != self.image_token_id:
                for axis in rows:
                    axis.append(next_pos)
                next_pos, i = next_pos + 1, i + 1
                continue
            h, w = self._qwen_grids[image]
            layout = self._layout(h, w, regions[image])
            for r, c in layout.positions:
                rows[0].append(next_pos)
                rows[1].append(next_pos + r)
                rows[2].append(next_pos + c)
            i += len(layout)
            next_pos += max(h, w)  # the full grid's extent, as without pruning
            image += 1
        return torch.tensor(rows)[:, None, :]

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[int], images, regions: list[Region | None], max_tokens: int
    ) -> Generation:
        tokens = self.image_tokens(images, regions)
        ids = torch.tensor(prompt_ids)
        placeholders = int((ids == self.image_token_id).sum())
        produced = sum(t.shape[0] for t in tokens)
        assert placeholders == produced, f"{placeholders} placeholders, {produced} image tokens"
        embed = self.model.get_input_embeddings()
        embeds = embed(ids).clone()
        embeds[ids == self.image_token_id] = torch.cat(tokens).to(embeds.dtype)
        positions = self._positions(prompt_ids, regions)
        lm = self.model.model.language_model
        deepstack = {}
        if self.arch in QWEN3_FAMILIES:
            deepstack = {
                "visual_pos_masks": (ids == self.image_token_id)[None],
                "deepstack_visual_embeds": [torch.cat(level) for level in self.deepstack],
            }
        out = lm(inputs_embeds=embeds[None], position_ids=positions, use_cache=True, **deepstack)
        cache, last = out.past_key_values, int(positions.max())
        generated, logprobs = [], []
        hidden = out.last_hidden_state[:, -1]
        for _ in range(max_tokens):
            logp = torch.log_softmax(self.model.lm_head(hidden).float(), dim=-1)[0]
            token = int(logp.argmax())
            generated.append(token)
            logprobs.append(float(logp[token]))
            last += 1
            step_positions = torch.tensor([[last]])
            if self.arch in QWEN_FAMILIES:
                step_positions = step_positions[None].expand(3, 1, 1)
            out = lm(
                inputs_embeds=embed(torch.tensor([[token]])),
                position_ids=step_positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
        return Generation(generated, logprobs)
