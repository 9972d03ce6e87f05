"""The deliverer benchmark's pictures (matplotlib, SVG in ``bench/results/``).

``draw(result, results_dir, name)`` writes, from one run's ``result``:

- ``<name>-throughput.svg``: deliveries/s against concurrency for every
  contender (median over rounds, each round as a faint dot), beside the
  limit ``concurrency / latency``;
- ``<name>-latency.svg``: the distribution of event published -> WeChat
  call at each measured event rate (an empirical CDF on a log time axis,
  with p50 and p99 marked).

``python -m bench.deliverer_figures [bench/results/deliverer.json]`` redraws
them from a saved result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

LABELS = {
    "invoice-sm": "invoice-sm deliver (1 process)",
    "invoice-sm x2": "invoice-sm deliver, 2 processes, one group",
    "client": "WeChatClient alone (httpx over our Http1Transport)",
    "aiohttp": "bare aiohttp client",
    "wechatpy": "wechatpy, thread pool",
}
STYLES: dict[str, dict[str, Any]] = {
    "invoice-sm": {"marker": "o", "color": "C0", "linewidth": 2.2},
    "invoice-sm x2": {"marker": "D", "color": "C4", "linestyle": "--"},
    "client": {"marker": "s", "color": "C2"},
    "aiohttp": {"marker": "^", "color": "C1"},
    "wechatpy": {"marker": "v", "color": "C3"},
}


def _series(result: dict[str, Any]) -> dict[str, dict[int, list[float]]]:
    runs = (result.get("throughput") or {}).get("runs", [])
    out: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        if run.get("rate_limit", 1e9) < 1e5:
            continue  # the rate-bound point is not a throughput figure
        name = run["contender"]
        if name == "invoice-sm" and run.get("processes", 1) > 1:
            name = "invoice-sm x2"
        out.setdefault(name, {}).setdefault(int(run["concurrency"]), []).append(float(run["rate_per_s"]))
    return out


def draw(result: dict[str, Any], results_dir: Path = RESULTS_DIR, name: str = "deliverer") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "invoice-sm"  # stable ids: a redraw of the same data is the same file
    written: list[Path] = []
    latency_ms = result["parameters"]["latency_ms"]
    date = str(result.get("machine", {}).get("date", ""))[:16].replace("T", " ")
    cpus = result.get("machine", {}).get("cpu_count", "?")

    series = _series(result)
    if series:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        cs = sorted({c for per_c in series.values() for c in per_c})
        ax.plot(
            cs, [c / (latency_ms / 1000) for c in cs], color="0.6", linestyle=":", label=f"limit: concurrency / {latency_ms} ms"
        )
        for contender in ("invoice-sm", "invoice-sm x2", "client", "aiohttp", "wechatpy"):
            per_c = series.get(contender)
            if not per_c:
                continue
            xs = sorted(per_c)
            med = [
                sorted(per_c[c])[len(per_c[c]) // 2]
                if len(per_c[c]) % 2
                else sum(sorted(per_c[c])[len(per_c[c]) // 2 - 1 : len(per_c[c]) // 2 + 1]) / 2
                for c in xs
            ]
            style = STYLES[contender]
            ax.plot(xs, med, label=LABELS[contender], **style)
            for c in xs:
                if len(per_c[c]) > 1:
                    ax.scatter([c] * len(per_c[c]), per_c[c], color=style["color"], alpha=0.3, s=12)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency (calls in flight)")
        ax.set_ylabel("successful updatestatus calls / s")
        ax.set_title(f"Deliverer throughput, simulator {latency_ms} ms per call ({cpus} shared cores, {date})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        path = results_dir / f"{name}-throughput.svg"
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(path)

    lats = [
        result[k]
        for k in ("latency", "latency_sustainable", "latency_two_processes")
        if result.get(k) and result[k].get("cdf_ms")
    ]
    if lats:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for i, lat in enumerate(lats):
            cdf = lat["cdf_ms"]  # [[percent, ms], ...]
            procs = lat.get("deliverer_processes", 1)
            label = f"{lat['event_rate']:,.0f} events/s, {procs} deliverer process{'es' if procs > 1 else ''}"
            m = lat["latency_ms"]
            label += f": p50 {m['p50']:,.0f} ms, p99 {m['p99']:,.0f} ms"
            if not lat.get("drained", True):
                label += " (not drained)"
            ax.plot([ms for _, ms in cdf], [q for q, _ in cdf], color=f"C{i}", label=label)
            for q in ("p50", "p99"):
                if m.get(q) is not None:
                    ax.scatter([m[q]], [float(q[1:])], color=f"C{i}", s=18, zorder=3)
        ax.axvline(250, color="0.5", linestyle=":", label="target: p99 <= 250 ms at 1,000 events/s")
        ax.set_xscale("log")
        ax.set_xlabel("event published -> WeChat call (ms, log scale)")
        ax.set_ylabel("events called within (percent)")
        ax.set_ylim(0, 100.5)
        ax.set_title(f"Latency distribution, processor + deliverer, simulator {latency_ms} ms per call ({date})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = results_dir / f"{name}-latency.svg"
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(path)
    return written


def cdf(values: list[float], points: int = 200) -> list[list[float]]:
    """``[[percent, value], ...]`` at ``points`` + 1 evenly spaced percents of ``values`` (nearest rank)."""
    if not values:
        return []
    xs = sorted(values)
    n = len(xs)
    out = []
    for i in range(points + 1):
        q = 100.0 * i / points
        k = min(n - 1, max(0, round(q / 100 * n + 0.5) - 1))
        out.append([round(q, 2), round(xs[k], 2)])
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else RESULTS_DIR / "deliverer.json"
    result = json.loads(path.read_text())
    for p in draw(result, path.parent, path.stem):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
