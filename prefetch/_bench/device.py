"""`prefetch bench --device cuda`: the host-to-GPU path of the `image` workload beside its peers, one run.

Runners, each timed after its first batch and until every copy it issued has landed:
torch DataLoader(pin_memory=True) with non-blocking copies; a plain pool whose
pageable batches are copied with `.to("cuda")`; `prefetch.torch.Loader(device=...)`
(page-locked slots, copies one batch ahead); and the pinned host-to-device limit,
256 MB copies from page-locked memory.
"""

from __future__ import annotations

import time
from typing import Any

from .._pool import Pool
from .runners import Result, _timed
from .workloads import WORKLOADS

LIMIT_BYTES = 256 << 20


def _synced(torch: Any, device: Any, batches: Any) -> Any:
    """Batches, with the device synchronised when the caller stops asking (so the copies are counted done)."""
    try:
        yield from batches
    finally:
        torch.cuda.synchronize(device)


def run(workers: int, seconds: float, device_name: str) -> list[Result]:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    import prefetch.torch

    device = torch.device(device_name)
    torch.cuda.init()
    workload = WORKLOADS["image"]
    results = []

    class Samples(IterableDataset):
        def __iter__(self) -> Any:
            info = get_worker_info()
            return workload.samples(seed=0 if info is None else 1000 + info.id)

    start = time.perf_counter()
    loader = DataLoader(Samples(), batch_size=workload.batch_size, num_workers=workers, pin_memory=True,
                        prefetch_factor=4)
    it = iter(loader)
    copies = (batch["X"].to(device, non_blocking=True) for batch in it)
    results.append(_timed(workload, "torch DataLoader(pin_memory)", start, _synced(torch, device, copies),
                          lambda b: len(b), seconds, {"workers": workers}))
    it._shutdown_workers()

    start = time.perf_counter()
    with Pool(workload.source(), batch_size=workload.batch_size, workers=workers, seed=0) as pool:
        copies = (torch.from_numpy(batch["X"]).to(device) for batch in pool)
        results.append(_timed(workload, "prefetch, pageable .to()", start, _synced(torch, device, copies),
                              lambda b: len(b), seconds, {"workers": workers}))

    start = time.perf_counter()
    with prefetch.torch.Loader(workload.source(), batch_size=workload.batch_size, workers=workers, seed=0,
                               device=device) as gpu:
        results.append(_timed(workload, "prefetch.torch.Loader(device)", start,
                              _synced(torch, device, iter(gpu)), lambda b: len(b["X"]), seconds,
                              {"workers": workers}))

    host = torch.empty(LIMIT_BYTES, dtype=torch.uint8).pin_memory()
    target = torch.empty(LIMIT_BYTES, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    copies, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        target.copy_(host, non_blocking=True)
        copies += 1
    torch.cuda.synchronize(device)
    rate = copies * LIMIT_BYTES / (time.perf_counter() - t0)
    results.append(Result(workload.name, "pinned copy limit (256 MB)", rate / workload.bytes_per_sample, rate / 1e6,
                          None))
    return results


def report(results: list[Result]) -> str:
    """The table, and the issue's goals as ratios of this run's figures."""
    by = {r.runner: r for r in results}
    lines = [f"{'runner':<32}{'samples/s':>12}{'GB/s':>9}{'first batch':>13}"]
    for r in results:
        first = "" if r.first_batch_s is None else f"{r.first_batch_s:.3f} s"
        lines.append(f"{r.runner:<32}{r.samples_per_s:>12,.0f}{r.mb_per_s / 1e3:>9.1f}{first:>13}")
    ours = by["prefetch.torch.Loader(device)"]
    lines.append("")
    lines.append(f"prefetch.torch.Loader / DataLoader(pin_memory): "
                 f"{ours.samples_per_s / by['torch DataLoader(pin_memory)'].samples_per_s:.1f}x (goal >= 10)")
    lines.append(f"prefetch.torch.Loader / pinned copy limit: "
                 f"{ours.mb_per_s / by['pinned copy limit (256 MB)'].mb_per_s:.0%} (goal >= 60%)")
    return "\n".join(lines)
