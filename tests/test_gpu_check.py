"""The CPU side of `make gpu-check`: arguments, JUnit reading, verdicts and the report."""

import json

import pytest

from tests.gpu.check import BackendResult, parse_args, read_junit, write_report
from tests.gpu.test_backends import VARIANTS

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.gpu.test_backends" name="test_the_engine_runs_the_backend_asked_for"/>
<testcase classname="tests.gpu.test_backends" name="test_a_mixed_batch_matches_the_fp32_reference">
<failure message="AssertionError: assert 812 == 77&#10;more lines">trace</failure></testcase>
<testcase classname="tests.gpu.test_backends" name="test_chunks_that_keep_no_token_run">
<skipped message="needs a CUDA GPU"/></testcase>
<testcase classname="tests.gpu.test_backends" name="test_metadata"/>
</testsuite></testsuites>
"""


def test_every_backend_runs_by_default():
    args = parse_args([])
    assert args.backends == list(VARIANTS) and args.bench and not args.kv_bench


def test_an_unknown_backend_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--backends", "NO_SUCH_BACKEND"])


def test_junit_counts_and_first_failure_lines(tmp_path):
    path = tmp_path / "FLASHINFER.xml"
    path.write_text(JUNIT)
    result = read_junit(path, "FLASHINFER", seconds=42.0)
    assert (result.passed, result.failed, result.skipped) == (2, 1, 1)
    assert result.problems == {
        "test_a_mixed_batch_matches_the_fp32_reference": "AssertionError: assert 812 == 77"
    }
    assert result.verdict == "FAIL"
    assert result.line().startswith("FLASHINFER       FAIL     (2 passed, 1 failed, 1 skipped")


def test_a_run_that_stopped_fails_without_tests():
    result = BackendResult("TRITON_ATTN", seconds=150.0, problems={"run": "timed out"})
    assert result.verdict == "FAIL" and "run: timed out" in result.line()
    assert BackendResult("TRITON_ATTN").verdict == "NOT RUN"


def test_the_report_holds_every_backend_and_the_benchmark(tmp_path):
    results = [BackendResult("FLASH_ATTN", passed=4, seconds=30.0), BackendResult("FLEX_ATTENTION")]
    path = write_report(tmp_path, {"gpu": "H200"}, results, {"rows": []})
    report = json.loads(path.read_text())
    assert report["backends"]["FLASH_ATTN"]["verdict"] == "PASS"
    assert report["backends"]["FLEX_ATTENTION"]["verdict"] == "NOT RUN"
    assert report["benchmark"] == {"rows": []} and report["environment"]["gpu"] == "H200"
