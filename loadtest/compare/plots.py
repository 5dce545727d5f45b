"""The comparison's plots: throughput and TTFT against concurrency, prompt tokens per row,
measured against ideal speedup, and the localizer's share of latency."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def plot(rows: list[Row], out: Path, title: str) -> list[Path]:
    """PNG files in `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    series = {c: [r for r in rows if r["config"] == c] for c in configs}
    written = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(textwrap.fill(title, 120), fontsize=6)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    def against_concurrency(ax: Any, key: str, label: str) -> None:
        for config, points in series.items():
            ax.plot([p["concurrency"] for p in points], [p[key] for p in points], "-o",
                    label=config)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(6, 4))
    against_concurrency(ax, "req_per_s", "requests / s")
    ax.legend(fontsize=8)
    save(fig, "throughput.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    against_concurrency(axes[0], "ttft_p50_s", "TTFT p50 (s)")
    against_concurrency(axes[1], "ttft_p99_s", "TTFT p99 (s)")
    axes[0].legend(fontsize=8)
    save(fig, "ttft.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    prompt = [statistics.mean(p["prompt_tokens"] for p in series[c]) for c in configs]
    ax.bar(configs, prompt)
    ax.set_ylabel("prompt tokens per request (image + text)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    save(fig, "tokens_kept.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (config, points) in enumerate(series.items()):
        color = f"C{index}"
        xs = [p["concurrency"] for p in points]
        ax.plot(xs, [p["speedup"] for p in points], "-o", color=color, label=config)
        ax.plot(xs, [p["ideal_speedup"] for p in points], ":", color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("throughput vs stock vLLM (dotted: ideal)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "speedup.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    against_concurrency(ax, "localizer_share", "localizer time / request latency")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=8)
    save(fig, "localizer_share.png")
    return written
