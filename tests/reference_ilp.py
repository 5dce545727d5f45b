"""A plain transformers + PyTorch implementation of ILP (and PLC + ILP), to check vLLM against.

Image features, PLC pooling, placement and M-RoPE positions come from `ReferencePLC`. The decoder
loop is written out here: layers < K run on every token, layers >= K only on the kept ones, with
their original (M-)RoPE positions and a causal mask over the kept tokens. Every greedy step
recomputes the whole sequence (no KV cache), so nothing here mirrors vLLM's compaction of the
paged KV cache: the two only agree if vLLM's compacted slots, sequence lengths and positions are
right. Shares only the pure layout math (`crop_vllm.layout`, `crop_vllm.ilp.plan`) with the plugin.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor

from crop_vllm.geometry import image_grids
from crop_vllm.ilp.plan import image_keep_mask
from crop_vllm.options import CropSettings, ImagePlan
from tests.reference_plc import Generation, ReferencePLC


def causal_mask(length: int) -> torch.Tensor:
    """Additive (1, 1, L, L) mask: each token sees itself and the tokens before it."""
    blocked = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.zeros(length, length).masked_fill(blocked, float("-inf"))[None, None]


class ReferenceILP(ReferencePLC):
    def __init__(self, arch: str, checkpoint: Path, settings: CropSettings) -> None:
        super().__init__(arch, checkpoint, settings.plc)
        self.crop = settings
        self.hf_config = AutoConfig.from_pretrained(checkpoint)
        self.image_processor_dict = AutoImageProcessor.from_pretrained(checkpoint).to_dict()

    def keep_mask(self, prompt_ids: list[int], images, plans: list[ImagePlan | None]) -> list[bool]:
        """Per prompt token, whether layers >= K see it: image runs in order, text always."""
        mask = [True] * len(prompt_ids)
        position = 0
        for image, plan in zip(images, plans, strict=True):
            grids = image_grids(
                self.hf_config, self.image_processor_dict, image.height, image.width
            )
            image_mask = image_keep_mask(grids, plan, self.crop.plc)
            while prompt_ids[position] != self.image_token_id:
                position += 1
            mask[position : position + len(image_mask)] = image_mask
            position += len(image_mask)
        mask[-1] = True  # the token the first output is sampled from is never dropped
        return mask

    def _run_layers(self, embeds: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor):
        """The text model on one sequence; returns the last token's final hidden state."""
        lm = self.model.model.language_model
        hidden = embeds[None]
        for index, layer in enumerate(lm.layers):
            if index == self.crop.ilp_layer:
                hidden, positions = hidden[:, keep], positions[..., keep]
            rotary = lm.rotary_emb(hidden, positions)
            hidden = layer(
                hidden,
                attention_mask=causal_mask(hidden.shape[1]),
                position_embeddings=rotary,
                position_ids=positions if positions.ndim == 2 else None,
            )
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return lm.norm(hidden)[:, -1]

    @torch.no_grad()
    def generate_ilp(
        self, prompt_ids: list[int], images, plans: list[ImagePlan | None], max_tokens: int
    ) -> Generation:
        plc_regions = [None if p is None else p.plc_region for p in plans]
        tokens = self.image_tokens(images, plc_regions)
        ids = torch.tensor(prompt_ids)
        embed = self.model.get_input_embeddings()
        embeds = embed(ids).clone()
        embeds[ids == self.image_token_id] = torch.cat(tokens).to(embeds.dtype)
        positions = self._positions(prompt_ids, plc_regions)  # (1, L) or (3, 1, L)
        keep = self.keep_mask(prompt_ids, images, plans)
        generated, logprobs, margins = [], [], []
        for _ in range(max_tokens):
            hidden = self._run_layers(embeds, positions, torch.tensor(keep))
            logp = torch.log_softmax(self.model.lm_head(hidden).float(), dim=-1)[0]
            best, second = logp.topk(2).values.tolist()
            token = int(logp.argmax())
            generated.append(token)
            logprobs.append(float(logp[token]))
            margins.append(best - second)
            next_position = positions.max() + 1
            embeds = torch.cat([embeds, embed(torch.tensor([token]))])
            positions = torch.cat(
                [positions, torch.full_like(positions[..., :1], int(next_position))], dim=-1
            )
            keep.append(True)
        return Generation(generated, logprobs, margins)
