"""vLLM's own benchmark client (`vllm.benchmarks.serve`, driven from Python: the CPU wheel's
`vllm` console script is broken) runs a short multimodal load against the gateway unchanged."""

from __future__ import annotations

import pytest

from tests.gateway_fixtures import API_KEY, MODEL_NAME

pytestmark = pytest.mark.engine

PROMPTS = 6


def test_vllms_benchmark_client_completes_a_multimodal_run_with_no_failed_request(
    gateway, gateway_model, monkeypatch
):
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # the benchmark's way to send a key
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", gateway.url,
            "--model", gateway_model, "--served-model-name", MODEL_NAME,
            "--dataset-name", "random-mm", "--num-prompts", str(PROMPTS),
            "--random-input-len", "32", "--random-output-len", "4", "--random-range-ratio", "0",
            "--random-mm-base-items-per-request", "1",
            "--random-mm-num-mm-items-range-ratio", "0",
            "--random-mm-limit-mm-per-prompt", '{"image": 1, "video": 0}',
            "--random-mm-bucket-config", "{(224, 224, 1): 1.0}",
            "--max-concurrency", "2", "--num-warmups", "0", "--disable-tqdm", "--seed", "0",
        ]
    )  # fmt: skip
    result = main(args)
    assert (result["completed"], result["failed"]) == (PROMPTS, 0)
    assert result["total_output_tokens"] == PROMPTS * 4  # it sets ignore_eos on every request
