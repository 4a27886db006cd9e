"""Run the benchmark, show progress, and report figures and same-run ratios against the targets."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

from . import runners
from .workloads import MUX_WEIGHTS, WORKLOADS

TORCH_PREFETCH_FACTORS = (2, 4, 8)
PROPORTION_SAMPLES = 1_000_000


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled

    def step(self, label: str) -> None:
        if self.enabled:
            filled = 30 * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {label:<45}")
            sys.stderr.flush()
        self.done += 1

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()


def plan(names: list[str], workers: int, seconds: float, sweep: bool) -> list[tuple[str, Callable[[], Any]]]:
    """(label, thunk) for every measurement, peers included only when installed."""
    steps: list[tuple[str, Callable[[], Any]]] = []
    for name in names:
        w = WORKLOADS[name]
        need = PROPORTION_SAMPLES if w.streams > 1 else 0
        steps.append((f"{name} · prefetch", lambda w=w, need=need: runners.run_prefetch(w, workers, seconds, need)))
        steps.append((f"{name} · in-process", lambda w=w: runners.run_in_process(w, seconds)))
        if _have("torch"):
            factors = TORCH_PREFETCH_FACTORS if sweep else (4,)
            steps.append((f"{name} · torch DataLoader", lambda w=w, f=factors: _best_torch(w, workers, seconds, f)))
        if _have("pescador"):
            steps.append((f"{name} · pescador ZMQStreamer", lambda w=w: runners.run_pescador(w, seconds)))
        steps.append((f"{name} · numpy.copyto", lambda w=w: runners.run_copyto(w, min(seconds, 1.0))))
    return steps


def _best_torch(workload: Any, workers: int, seconds: float, factors: tuple[int, ...]) -> runners.Result:
    """DataLoader at its best prefetch_factor: a short trial of each, then a full run of the best."""
    if len(factors) > 1:
        trials = {f: runners.run_torch(workload, workers, min(seconds, 1.0), f).samples_per_s for f in factors}
        factors = (max(trials, key=trials.get),)
    result = runners.run_torch(workload, workers, seconds, factors[0])
    result.settings["prefetch_factor_tried"] = list(TORCH_PREFETCH_FACTORS) if len(factors) else []
    return result


def _find(results: list[runners.Result], workload: str, runner: str) -> runners.Result | None:
    return next((r for r in results if r.workload == workload and r.runner == runner), None)


def targets(results: list[runners.Result]) -> list[dict[str, Any]]:
    """The issue's targets as ratios measured in this run; None where a peer was not installed."""
    out: list[dict[str, Any]] = []

    def ratio(name: str, workload: str, peer: str, goal: float, field: str = "samples_per_s") -> None:
        ours, theirs = _find(results, workload, "prefetch"), _find(results, workload, peer)
        if ours is None:
            return
        value = getattr(ours, field) / getattr(theirs, field) if theirs else None
        out.append({"target": name, "goal": f">= {goal}", "value": value,
                    "ok": None if value is None else value >= goal})

    ratio("small: prefetch / pescador ZMQStreamer", "small", "pescador ZMQStreamer", 1.5)
    ratio("small: prefetch / torch DataLoader", "small", "torch DataLoader", 8)
    ratio("image: prefetch / torch DataLoader", "image", "torch DataLoader", 4)
    ratio("image: prefetch MB/s / numpy.copyto MB/s", "image", "numpy.copyto", 0.4, "mb_per_s")
    ratio("cpu: prefetch / in-process", "cpu", "in-process", 1.7)
    ratio("cpu: prefetch / torch DataLoader", "cpu", "torch DataLoader", 1.4)
    mux, small = _find(results, "mux", "prefetch"), _find(results, "small", "prefetch")
    if mux is not None and small is not None:
        value = mux.samples_per_s / small.samples_per_s
        out.append({"target": "mux: prefetch mux / prefetch small", "goal": ">= 0.9", "value": value,
                    "ok": value >= 0.9})
    if mux is not None:
        error = max(abs(p - w) for p, w in zip(mux.extra["proportions"], MUX_WEIGHTS, strict=True))
        out.append({"target": f"mux: max |share - weight| over {mux.extra['proportion_samples']:,} samples",
                    "goal": "<= 0.01", "value": error, "ok": error <= 0.01})
    for r in results:
        if r.runner == "prefetch":
            out.append({"target": f"{r.workload}: first batch (s)", "goal": "<= 0.2", "value": r.first_batch_s,
                        "ok": r.first_batch_s <= 0.2})
    return out


def table(results: list[runners.Result], goals: list[dict[str, Any]]) -> str:
    lines = [f"{'workload':<8} {'runner':<22} {'samples/s':>12} {'MB/s':>10} {'first batch':>12}  settings"]
    for r in results:
        first = "" if r.first_batch_s is None else f"{r.first_batch_s:.3f} s"
        settings = ", ".join(f"{k}={v}" for k, v in r.settings.items() if k != "prefetch_factor_tried")
        lines.append(f"{r.workload:<8} {r.runner:<22} {r.samples_per_s:>12,.0f} {r.mb_per_s:>10,.1f} {first:>12}  "
                     f"{settings}")
    lines += ["", f"{'target':<58} {'goal':>8} {'measured':>10}  ok"]
    for g in goals:
        value = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        mark = {True: "yes", False: "NO", None: "-"}[g["ok"]]
        lines.append(f"{g['target']:<58} {g['goal']:>8} {value:>10}  {mark}")
    return "\n".join(lines)


def run(names: list[str], workers: int, seconds: float, sweep: bool, json_path: str | None,
        progress: bool) -> int:
    """Run the benchmark, print its table, and write JSON if asked; 0 on completion."""
    steps = plan(names, workers, seconds, sweep)
    bar = Progress(len(steps), progress)
    results = []
    for label, thunk in steps:
        bar.step(label)
        results.append(thunk())
    bar.finish()
    goals = targets(results)
    print(f"prefetch bench: {workers} workers, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{seconds:g} s per measurement")
    print(table(results, goals))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"workers": workers, "cores": os.cpu_count(), "seconds": seconds,
                       "python": platform.python_version(),
                       "results": [dataclasses.asdict(r) for r in results], "targets": goals}, f, indent=2)
    return 0
