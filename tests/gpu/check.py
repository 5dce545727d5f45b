"""`make gpu-check`: PLC and ILP on every CUDA attention backend, and a short benchmark, on one GPU.

    python -m tests.gpu.check [--out DIR] [--backends NAME ...] [--no-bench] [--kv-bench]

Each backend variant (`tests/gpu/test_backends.py`: FA3 and FA2 FlashAttention, Triton,
FlashInfer, FlexAttention) runs in a pytest process of its own (bf16 engine against the fp32
reference, the stock-metadata invariant, chunks that keep no token), with a time limit, so that
one backend that hangs or crashes does not take the others with it. Then the benchmark
(`loadtest.bench_kv`: stock vLLM defaults, PLC, ILP and PLC+ILP on the `bench` checkpoint;
TTFT, throughput, KV blocks per request; `--kv-bench` runs its full KV-bound sweep instead of
the short one). Everything lands in DIR/report.json; one verdict line per backend is printed.
The exit status is 0 only when every backend passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.gpu.test_backends import VARIANTS

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BackendResult:
    variant: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    #: Test name -> first line of its failure, or what stopped the run (timeout, crash).
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.problems or self.failed:
            return "FAIL"
        return "PASS" if self.passed else "NOT RUN"

    def line(self) -> str:
        detail = f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"
        first = next(iter(self.problems.items()), None)
        why = f"; {first[0]}: {first[1]}" if first else ""
        return f"{self.variant:<16} {self.verdict:<8} ({detail} in {self.seconds:.0f} s{why})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check-report"))
    parser.add_argument(
        "--backends", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME"
    )
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per backend")
    parser.add_argument("--no-bench", dest="bench", action="store_false")
    parser.add_argument("--kv-bench", action="store_true", help="the full KV-bound benchmark")
    return parser.parse_args(argv)


def read_junit(path: Path, variant: str, seconds: float) -> BackendResult:
    """A backend's result from pytest's JUnit XML."""
    result = BackendResult(variant, seconds=seconds)
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = case.get("name", "?")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            result.failed += 1
            result.problems[name] = (failure.get("message") or "failed").splitlines()[0][:200]
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    return result


def run_backend(variant: str, out: Path, timeout: float) -> BackendResult:
    junit = out / f"{variant}.xml"
    log = out / f"{variant}.log"
    env = {**os.environ, "CROP_GPU_BACKEND": variant, "VLLM_USE_V2_MODEL_RUNNER": "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += [f"--junitxml={junit}", "tests/gpu/test_backends.py"]
    start = time.monotonic()
    with log.open("w") as output:
        try:
            subprocess.run(
                command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return BackendResult(
                variant, seconds=timeout, problems={"run": f"timed out after {timeout:.0f} s"}
            )
    seconds = time.monotonic() - start
    if not junit.exists():
        return BackendResult(variant, seconds=seconds, problems={"run": f"crashed, see {log}"})
    return read_junit(junit, variant, seconds)


def run_benchmark(out: Path, full: bool, timeout: float) -> dict[str, object]:
    target = out / "benchmark.json"
    command = [sys.executable, "-m", "loadtest.bench_kv", "--json", str(target)]
    if not full:
        command.append("--short")
    with (out / "benchmark.log").open("w") as output:
        try:
            subprocess.run(
                command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, timeout=timeout,
                check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"problem": f"timed out after {timeout:.0f} s"}
    if not target.exists():
        return {"problem": f"no result, see {out / 'benchmark.log'}"}
    return json.loads(target.read_text())


def environment() -> dict[str, object]:
    import torch
    import vllm

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "vllm": vllm.__version__}


def write_report(
    out: Path, env: dict, results: list[BackendResult], benchmark: dict | None
) -> Path:
    report = {
        "environment": env,
        "backends": {r.variant: {**asdict(r), "verdict": r.verdict} for r in results},
        "benchmark": benchmark,
    }
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"gpu-check on {env['gpu']} (vLLM {env['vllm']}, torch {env['torch']})", flush=True)
    results = []
    for variant in args.backends:
        results.append(run_backend(variant, args.out, args.timeout))
        print(results[-1].line(), flush=True)
    benchmark = run_benchmark(args.out, args.kv_bench, 10 * args.timeout) if args.bench else None
    print(f"report: {write_report(args.out, env, results, benchmark)}")
    return 0 if all(r.verdict == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
