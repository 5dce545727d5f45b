"""A plain transformers + PyTorch implementation of PLC, to check the vLLM plugin against.

It shares only the pure layout math (`crop_vllm.layout`) with the plugin: image features come
from transformers' own modules, pooling is a per-token mean, placement, M-RoPE positions and
greedy decoding are written out here. Runs in float32 on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoProcessor
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from crop_vllm.layout import Layout, PLCSettings, Region, build_layout


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


class ReferencePLC:
    def __init__(self, arch: str, checkpoint: Path, settings: PLCSettings) -> None:
        from transformers import (
            LlavaForConditionalGeneration,
            LlavaNextForConditionalGeneration,
            Qwen2_5_VLForConditionalGeneration,
        )

        model_cls = {
            "llava": LlavaForConditionalGeneration,
            "llava_next": LlavaNextForConditionalGeneration,
            "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
        }[arch]
        self.arch = arch
        self.settings = settings
        self.model = model_cls.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.config = self.model.config
        self.image_token_id = self.config.image_token_id

    # -- image features, pruned, one tensor per image ------------------------------------------

    @torch.no_grad()
    def image_tokens(self, images, regions: list[Region | None]) -> list[torch.Tensor]:
        return getattr(self, f"_{self.arch}_tokens")(images, regions)

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

    # -- prompt assembly and greedy decoding -----------------------------------------------------

    def _positions(self, ids: list[int], regions: list[Region | None]) -> torch.Tensor:
        """Position ids for the prompt: 1-D for LLaVA, 3 x L M-RoPE for Qwen2.5-VL."""
        if self.arch != "qwen2_5_vl":
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
        out = lm(inputs_embeds=embeds[None], position_ids=positions, use_cache=True)
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
            if self.arch == "qwen2_5_vl":
                step_positions = step_positions[None].expand(3, 1, 1)
            out = lm(
                inputs_embeds=embed(torch.tensor([[token]])),
                position_ids=step_positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
        return Generation(generated, logprobs)
