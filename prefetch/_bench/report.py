"""Run the benchmark, show progress, and report figures and same-run ratios against the targets."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
from collections.abc import Callable
from typing import Any

from .._progress import Progress
from . import runners
from .ray import OTHER_NODE, TRANSFER, run_transfer
from .workloads import MUX_WEIGHTS, WORKLOADS

TORCH_PREFETCH_FACTORS = (2, 4, 8)
PROPORTION_SAMPLES = 1_000_000


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan(names: list[str], workers: list[int], seconds: float, sweep: bool,
         ray_runners: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, Callable[[], Any]]]:
    """(label, thunk) for every measurement, peers included only when installed; pools once per worker count.

    `ray_runners` maps runner names to prefetch.ray.Pool options (`prefetch bench --ray`).
    """
    steps: list[tuple[str, Callable[[], Any]]] = []
    for name in names:
        w = WORKLOADS[name]
        need = PROPORTION_SAMPLES if w.streams > 1 else 0
        for n in workers:
            steps.append((f"{name} · prefetch x{n}",
                          lambda w=w, n=n, need=need: runners.run_prefetch(w, n, seconds, need)))
        for runner, options in (ray_runners or {}).items():
            for n in workers:
                steps.append((f"{name} · {runner} x{n}", lambda w=w, n=n, r=runner, o=options:
                              runners.run_prefetch(w, n, seconds, 0, _ray_pool(), r, o)))
        if ray_runners and OTHER_NODE in ray_runners:
            steps.append((f"{name} · {TRANSFER}",
                          lambda w=w: run_transfer(w, min(seconds, 2.0), ray_runners[OTHER_NODE])))
        steps.append((f"{name} · in-process", lambda w=w: runners.run_in_process(w, seconds)))
        if _have("torch") and name == "image":
            for n in workers:
                steps.append((f"{name} · prefetch.torch.Loader x{n}",
                              lambda w=w, n=n: runners.run_prefetch_torch(w, n, seconds)))
        if _have("torch"):
            factors = TORCH_PREFETCH_FACTORS if sweep else (4,)
            for n in workers:
                steps.append((f"{name} · torch DataLoader x{n}",
                              lambda w=w, n=n, f=factors: _best_torch(w, n, seconds, f)))
        if _have("pescador"):
            steps.append((f"{name} · pescador ZMQStreamer", lambda w=w: runners.run_pescador(w, seconds)))
        steps.append((f"{name} · numpy.copyto", lambda w=w: runners.run_copyto(w, min(seconds, 1.0))))
    return steps


def _ray_pool() -> type:
    import prefetch.ray

    return prefetch.ray.Pool


def _best_torch(workload: Any, workers: int, seconds: float, factors: tuple[int, ...]) -> runners.Result:
    """DataLoader at its best prefetch_factor: a short trial of each, then a full run of the best."""
    if len(factors) > 1:
        trials = {f: runners.run_torch(workload, workers, min(seconds, 1.0), f).samples_per_s for f in factors}
        factors = (max(trials, key=trials.get),)
    result = runners.run_torch(workload, workers, seconds, factors[0])
    result.settings["prefetch_factor_tried"] = list(TORCH_PREFETCH_FACTORS) if len(factors) else []
    return result


def _find(results: list[runners.Result], workload: str, runner: str,
          workers: int | None = None) -> runners.Result | None:
    return next((r for r in results if r.workload == workload and r.runner == runner
                 and (workers is None or r.settings.get("workers") == workers)), None)


RATE_GOALS = {2: (1.5, 1.6), 8: (5.0, 5.0)}
"""Goals of mux-rate and activation against in-process iteration, by worker count (8: any count from 8 up)."""


def targets(results: list[runners.Result], workers: list[int]) -> list[dict[str, Any]]:
    """The targets as ratios measured in this run, at each worker count swept; None where a peer was not installed."""
    out: list[dict[str, Any]] = []

    def add(name: str, goal: float | None, value: float | None) -> None:
        ok = None if value is None or goal is None else value >= goal
        out.append({"target": name, "goal": "-" if goal is None else f">= {goal}", "value": value, "ok": ok})

    for n in workers:
        def ratio(name: str, workload: str, peer: str, goal: float | None, field: str = "samples_per_s",
                  peer_workers: int | None = None, n: int = n) -> None:
            ours, theirs = _find(results, workload, "prefetch", n), _find(results, workload, peer, peer_workers)
            if ours is not None:
                add(f"{name} (x{n})", goal, getattr(ours, field) / getattr(theirs, field) if theirs else None)

        two = n == 2
        ratio("small: prefetch / pescador ZMQStreamer", "small", "pescador ZMQStreamer", 1.5 if two else None)
        ratio("small: prefetch / torch DataLoader", "small", "torch DataLoader", 8 if two else None, peer_workers=n)
        ratio("image: prefetch / torch DataLoader", "image", "torch DataLoader", 4 if two else None, peer_workers=n)
        ratio("image: prefetch MB/s / numpy.copyto MB/s", "image", "numpy.copyto", 0.4 if two else None, "mb_per_s")
        adapter, pool = _find(results, "image", "prefetch.torch.Loader", n), _find(results, "image", "prefetch", n)
        if adapter is not None and pool is not None:
            add(f"image: prefetch.torch.Loader (CPU) / prefetch (x{n})", 0.95 if two else None,
                adapter.samples_per_s / pool.samples_per_s)
        ratio("cpu: prefetch / in-process", "cpu", "in-process", 1.7 if two else None)
        ratio("cpu: prefetch / torch DataLoader", "cpu", "torch DataLoader", 1.4 if two else None, peer_workers=n)
        goals = RATE_GOALS.get(2 if two else 8 if n >= 8 else -1, (None, None))
        ratio("mux-rate: prefetch / in-process", "mux-rate", "in-process", goals[0])
        ratio("activation: prefetch / in-process", "activation", "in-process", goals[1])
        ratio("mux-rate: prefetch / pescador ZMQStreamer", "mux-rate", "pescador ZMQStreamer", None)
        ratio("activation: prefetch / pescador ZMQStreamer", "activation", "pescador ZMQStreamer", None)
        for runner in dict.fromkeys(r.runner for r in results if r.runner.startswith("prefetch.ray")):
            for workload in dict.fromkeys(r.workload for r in results):
                ray_pool, pool = _find(results, workload, runner, n), _find(results, workload, "prefetch", n)
                if ray_pool is not None and pool is not None:
                    goal = 0.5 if two and workload == "image" and runner != OTHER_NODE else None
                    add(f"{workload}: {runner} / prefetch (x{n})", goal, ray_pool.samples_per_s / pool.samples_per_s)
                transfer = _find(results, workload, TRANSFER)
                if ray_pool is not None and transfer is not None and runner == OTHER_NODE:
                    add(f"{workload}: {runner} MB/s / {TRANSFER} MB/s (x{n})", None,
                        ray_pool.mb_per_s / transfer.mb_per_s)
        mux, small = _find(results, "mux", "prefetch", n), _find(results, "small", "prefetch", n)
        if mux is not None and small is not None:
            add(f"mux: prefetch mux / prefetch small (x{n})", 0.9 if two else None,
                mux.samples_per_s / small.samples_per_s)
        if mux is not None:
            error = max(abs(p - w) for p, w in zip(mux.extra["proportions"], MUX_WEIGHTS, strict=True))
            add(f"mux: max |share - weight| over {mux.extra['proportion_samples']:,} samples (x{n})", None, error)
            out[-1].update(goal="<= 0.01", ok=error <= 0.01)
    for r in results:
        if r.runner == "prefetch":
            add(f"{r.workload}: first batch, s (x{r.settings['workers']})", None, r.first_batch_s)
            out[-1].update(goal="<= 0.2", ok=r.first_batch_s <= 0.2)
    return out


def plot(results: list[runners.Result], path: str) -> None:
    """Samples/s against workers, one panel per workload, a line per runner (flat for single-process ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.workload for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    counts = sorted({r.settings["workers"] for r in results if "workers" in r.settings and r.runner != "pescador "
                     "ZMQStreamer"})
    for ax, name in zip(axes[0], names, strict=True):
        mine = [r for r in results if r.workload == name and r.runner != "numpy.copyto"]
        for runner in dict.fromkeys(r.runner for r in mine):
            runs = sorted((r for r in mine if r.runner == runner), key=lambda r: r.settings.get("workers", 0))
            if len(runs) > 1 or (runs and runner in ("prefetch", "torch DataLoader")):
                ax.plot([r.settings["workers"] for r in runs], [r.samples_per_s for r in runs], marker="o",
                        label=runner)
            elif runs:
                ax.axhline(runs[0].samples_per_s, linestyle="--", label=runner, color="grey" if runner ==
                           "in-process" else None)
        ax.set_title(name)
        ax.set_xlabel("workers")
        ax.set_xticks(counts)
        ax.set_ylabel("samples/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def median_round(rounds: list[list[runners.Result]]) -> list[runners.Result]:
    """Each measurement's median over rounds (the lower middle one for an even count), its figures from that
    round, with every round's samples/s in `extra["rounds"]`."""
    out = []
    for runs in zip(*rounds, strict=True):
        rates = [r.samples_per_s for r in runs]
        middle = runs[rates.index(statistics.median_low(rates))]
        out.append(dataclasses.replace(middle, extra={**middle.extra, "rounds": rates}))
    return out


def median_targets(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target's median over rounds, every ratio taken within its own round (so a drift of the machine
    between rounds moves a runner and its peer together), with every round's value in "rounds"."""
    out = []
    for entries in zip(*rounds, strict=True):
        values = [g["value"] for g in entries]
        known = [v for v in values if v is not None]
        middle = entries[values.index(statistics.median_low(known))] if known else entries[0]
        out.append({**middle, "rounds": values})
    return out


def table(results: list[runners.Result], goals: list[dict[str, Any]]) -> str:
    """The figures, then the targets; with several rounds, each figure's range over them too."""
    rounds = len(results[0].extra.get("rounds", [])) > 1 if results else False
    spread = f" {'range':>15}" if rounds else ""
    lines = [f"{'workload':<10} {'runner':<26} {'samples/s':>12}{spread} {'MB/s':>10} {'first batch':>12}  settings"]
    for r in results:
        first = "" if r.first_batch_s is None else f"{r.first_batch_s:.3f} s"
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if k != "prefetch_factor_tried")
        span = f" {_span(r.extra['rounds'], _rate):>15}" if rounds else ""
        lines.append(f"{r.workload:<10} {r.runner:<26} {r.samples_per_s:>12,.0f}{span} {r.mb_per_s:>10,.1f} "
                     f"{first:>12}  {settings}")
    ranges = f" {'range':>13}" if rounds else ""
    lines += ["", f"{'target':<72} {'goal':>8} {'measured':>10}{ranges}  ok"]
    for g in goals:
        value = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        mark = {True: "yes", False: "NO", None: "-"}[g["ok"]]
        span = f" {_span(g['rounds'], '{:.3f}'.format):>13}" if rounds else ""
        lines.append(f"{g['target']:<72} {g['goal']:>8} {value:>10}{span}  {mark}")
    return "\n".join(lines)


def _span(values: list[float | None], form: Callable[[float], str]) -> str:
    known = [v for v in values if v is not None]
    return f"{form(min(known))}-{form(max(known))}" if known else "n/a"


def _rate(value: float) -> str:
    """Samples/s in three digits or so: 704k, 1.01M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def run(names: list[str], workers: list[int], seconds: float, sweep: bool, json_path: str | None,
        progress: bool, plot_path: str | None = None, ray: bool = False, ray_address: str | None = None,
        rounds: int = 1) -> int:
    """Run the benchmark, print its table, write JSON and a plot if asked; 0 on completion.

    With `ray`, prefetch.ray.Pool runs too, on a Ray cluster started for the run (or at `ray_address`).
    With several `rounds`, every measurement runs once per round, round after round, and
    the report gives medians and ranges: on a busy or small machine one run of each
    can put a ratio well off its typical value.
    """
    with contextlib.ExitStack() as stack:
        ray_runners = None
        if ray:
            from . import ray as ray_bench

            ray_runners = stack.enter_context(ray_bench.cluster(ray_address))
        steps = plan(names, workers, seconds, sweep, ray_runners)
        bar = Progress(len(steps) * rounds, "measurements", progress)
        by_round: list[list[runners.Result]] = []
        for number in range(rounds):
            by_round.append([])
            for label, thunk in steps:
                bar.step(label if rounds == 1 else f"round {number + 1}: {label}", count=0)
                by_round[-1].append(thunk())
                bar.step()
        bar.finish()
    results = median_round(by_round) if rounds > 1 else by_round[0]
    goals = median_targets([targets(r, workers) for r in by_round]) if rounds > 1 else targets(results, workers)
    print(f"prefetch bench: {','.join(map(str, workers))} workers, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {seconds:g} s per measurement"
          + (f", median of {rounds} rounds" if rounds > 1 else ""))
    print(table(results, goals))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"workers": workers, "cores": os.cpu_count(), "seconds": seconds, "rounds": rounds,
                       "python": platform.python_version(),
                       "results": [dataclasses.asdict(r) for r in results], "targets": goals}, f, indent=2)
    if plot_path:
        plot(results, plot_path)
    return 0
