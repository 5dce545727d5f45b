"""How the CROP processor resizes a family's stock image placeholder to the pruned count."""

import pytest
import torch
from vllm.multimodal.processing import PromptUpdateDetails

from crop_vllm.models.processor import with_embed_count

IMG, CTX, END = 7, 9, 8


def test_a_plain_token_list_becomes_count_copies_of_its_token():
    assert with_embed_count([5] * 64, 19) == [5] * 19


def test_wrapping_tokens_stay_and_only_the_embedding_run_is_resized():
    stock = PromptUpdateDetails.select_token_id([IMG, *[CTX] * 64, END], CTX)
    pruned = with_embed_count(stock, 19)
    assert pruned.full == [IMG, *[CTX] * 19, END]
    assert pruned.is_embed(pruned.full).tolist() == [False, *[True] * 19, False]


def test_details_without_a_mask_are_all_embeddings():
    assert with_embed_count(PromptUpdateDetails.from_seq([CTX] * 8), 3).full == [CTX] * 3


def test_embeddings_split_by_other_tokens_are_refused():
    stock = PromptUpdateDetails.select_token_id([IMG, CTX, END, CTX, END], CTX)
    with pytest.raises(NotImplementedError, match="one run"):
        with_embed_count(stock, 1)


def test_is_embed_is_a_tensor_mask():
    stock = PromptUpdateDetails.select_token_id([IMG, CTX, END], CTX)
    assert isinstance(with_embed_count(stock, 2).is_embed([IMG, CTX, CTX, END]), torch.Tensor)
