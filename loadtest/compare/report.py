"""The comparison's figures: one row per configuration and concurrency, each measured ratio to
stock vLLM next to its layer-weighted ideal and the bound left by what pruning cannot shrink;
the rows with the localizer apart; and where a request's time goes at one client."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.common import fixed_share, percentile
from loadtest.compare.sweep import Level
from loadtest.compare.workload import CONFIGS, Workload

Row = dict[str, Any]
STOCK = "stock vLLM"
#: The client-region row each localizer row is the same pruning of.
CLIENT_REGION_OF = {"PLC (localizer)": "PLC", "PLC+ILP (localizer)": "PLC+ILP"}


def summary(level: Level, workload: Workload) -> Row:
    """A level's means and percentiles; stock rows count the visual tokens the geometry gives
    (their answers carry no `usage.crop`)."""
    config = next(c for c in CONFIGS if c.name == level.config)
    samples = level.samples
    latency = statistics.mean(s.latency_s for s in samples)
    if config.target == "stock":
        visual = after_ilp = float(workload.visual_tokens(config))
    else:
        visual = statistics.mean(s.crop["visual_tokens_after_plc"] for s in samples)  # type: ignore[index]
        after_ilp = statistics.mean(s.crop["visual_tokens_after_ilp"] for s in samples)  # type: ignore[index]
    engine = level.engine
    outside = latency - engine["queue_s"] - engine["prefill_s"] - engine["decode_s"]
    ttft = [s.ttft_s for s in samples if s.ttft_s is not None]
    return {
        "config": level.config,
        "concurrency": level.concurrency,
        "requests": len(samples),
        "req_per_s": len(samples) / level.wall_s,
        "output_tok_per_s": sum(s.completion_tokens for s in samples) / level.wall_s,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "latency_s": latency,
        "prompt_tokens": statistics.mean(s.prompt_tokens for s in samples),
        "visual_tokens": visual,
        "visual_after_ilp": after_ilp,
        "localizer_share": sum(s.crop["localizer_seconds"] for s in samples if s.crop)
        / sum(s.latency_s for s in samples),
        **engine,
        "outside_s": outside,
        "fixed_share": fixed_share(latency, engine),
    }


def with_speedups(rows: list[Row], layers: int, ilp_layer: int) -> list[Row]:
    """Adds, per row, throughput relative to stock vLLM at the same concurrency (`speedup`);
    the ideal: stock's layer-weighted prefill tokens over the row's (what a prefill-bound
    engine would gain: a prompt token costs `layers` decoder layers, a visual token ILP drops
    `ilp_layer`); and the `bound` that stock's fixed share leaves to that ideal
    (1 / (fixed + (1 - fixed) / ideal))."""

    def layer_weighted(row: Row) -> float:
        dropped = row["visual_tokens"] - row["visual_after_ilp"]
        dropped = 0.0 if math.isnan(dropped) else dropped
        return layers * row["prompt_tokens"] - (layers - min(ilp_layer, layers)) * dropped

    stock = {r["concurrency"]: r for r in rows if r["config"] == STOCK}
    for row in rows:
        base = stock.get(row["concurrency"])
        if base is None:
            row["speedup"] = row["ideal_speedup"] = row["bound"] = float("nan")
            continue
        row["speedup"] = row["req_per_s"] / base["req_per_s"]
        row["ideal_speedup"] = layer_weighted(base) / layer_weighted(row)
        fixed = base.get("fixed_share", float("nan"))
        row["bound"] = 1 / (fixed + (1 - fixed) / row["ideal_speedup"])
    return rows


def _table(rows: list[Row], columns: tuple[tuple[str, str, str], ...]) -> list[str]:
    """Aligned lines, a title line first: (title, key, format) per column."""
    lines = [[title for title, _, _ in columns]]
    lines += [[fmt.format(row[key]) for _, key, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]

    def aligned(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True))])

    return [aligned(line) for line in lines]


MAIN_COLUMNS = (
    ("config", "config", "{}"), ("conc", "concurrency", "{}"), ("req/s", "req_per_s", "{:.2f}"),
    ("TTFT50", "ttft_p50_s", "{:.2f}"), ("TTFT99", "ttft_p99_s", "{:.2f}"),
    ("prompt", "prompt_tokens", "{:.0f}"), ("visual", "visual_tokens", "{:.0f}"),
    ("after K", "visual_after_ilp", "{:.0f}"), ("x stock", "speedup", "{:.2f}x"),
    ("ideal", "ideal_speedup", "{:.2f}x"), ("bound", "bound", "{:.2f}x"),
    ("fixed", "fixed_share", "{:.0%}"),
)  # fmt: skip
LOCALIZER_COLUMNS = (
    ("config", "config", "{}"), ("conc", "concurrency", "{}"), ("req/s", "req_per_s", "{:.2f}"),
    ("visual", "visual_tokens", "{:.0f}"), ("x stock", "speedup", "{:.2f}x"),
    ("x client region", "vs_client_region", "{:.2f}x"), ("ideal", "ideal_speedup", "{:.2f}x"),
    ("localizer", "localizer_share", "{:.0%}"),
)  # fmt: skip
BREAKDOWN_COLUMNS = (
    ("config", "config", "{}"), ("latency s", "latency_s", "{:.3f}"),
    ("outside s", "outside_s", "{:.3f}"), ("queue s", "queue_s", "{:.3f}"),
    ("prefill s", "prefill_s", "{:.3f}"), ("decode s", "decode_s", "{:.3f}"),
    ("fixed", "fixed_share", "{:.0%}"),
)  # fmt: skip


def table(rows: list[Row], unavailable: dict[str, str], header: str) -> str:
    """The comparison as text: the rows against stock, the localizer's rows apart, and the
    one-client breakdown of request time."""
    localized = {c.name for c in CONFIGS if c.localized}
    main = [r for r in rows if r["config"] not in localized]
    lines = [header, "", *_table(main, MAIN_COLUMNS)]
    lines += [f"{name}: n/a ({reason})" for name, reason in unavailable.items()]
    lines += [
        "",
        "x stock: throughput / stock vLLM's at the same concurrency; ideal: stock's "
        "layer-weighted prefill tokens / the row's; bound: that ideal capped by stock's fixed "
        "share (decode and time outside the engine, which pruning does not shrink; the vision "
        "encoder is inside the prefill, so the real cap is lower).",
    ]
    with_localizer = [r for r in rows if r["config"] in localized]
    if with_localizer:
        client = {(r["config"], r["concurrency"]): r for r in rows}
        for row in with_localizer:
            same = client.get((CLIENT_REGION_OF[row["config"]], row["concurrency"]))
            row["vs_client_region"] = row["req_per_s"] / same["req_per_s"] if same else math.nan
        lines += ["", "With the localizer (regions found per request, its cost included):"]
        lines += _table(with_localizer, LOCALIZER_COLUMNS)
    single = [r for r in rows if r["concurrency"] == 1]
    if single:
        lines += [
            "",
            "One client: where a request's time goes (outside: preprocessing, HTTP, gateway and "
            "localizer; queue, prefill and decode: vLLM's own histograms)",
            *_table(single, BREAKDOWN_COLUMNS),
        ]
    return "\n".join(lines)


def write(out: Path, header: str, rows: list[Row], levels: list[Level], notes: dict) -> None:
    """results.json (header, rows, what was unavailable, every sample) and results.csv."""
    (out / "results.json").write_text(
        json.dumps(
            {
                "header": header,
                "rows": rows,
                "unavailable": notes,
                "samples": [asdict(level) for level in levels],
            },
            indent=1,
        )
    )
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with (out / "results.csv").open("w") as csv:
        csv.write(",".join(keys) + "\n")
        csv.writelines(",".join(str(row.get(key, "")) for key in keys) + "\n" for row in rows)
