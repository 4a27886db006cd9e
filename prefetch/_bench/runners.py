"""The loaders a workload runs through: prefetch's Pool and its peers, each at its best settings.

Every runner reports the time to its first batch (from constructing the loader) and
the samples per second of a timed stretch after it. Peers are imported only when run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._pool import Pool
from .workloads import Workload


@dataclass
class Result:
    """One runner's figures on one workload."""

    workload: str
    runner: str
    samples_per_s: float
    mb_per_s: float
    first_batch_s: float | None
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _timed(workload: Workload, runner: str, start: float, batches: Iterator[Any], size: Callable[[Any], int],
           seconds: float, settings: dict[str, Any], on_batch: Callable[[Any], None] | None = None) -> Result:
    """Take the first batch, then count samples for `seconds`."""
    first = next(batches)
    first_s = time.perf_counter() - start
    del first
    count = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    for batch in batches:
        count += size(batch)
        if on_batch is not None:
            on_batch(batch)
        del batch
        if time.perf_counter() >= deadline:
            break
    rate = count / (time.perf_counter() - t0)
    return Result(workload.name, runner, rate, rate * workload.bytes_per_sample / 1e6, first_s, settings)


PREFETCH_SLOTS = None
"""The pool's own default, slots sized by a batch's bytes (see auto_prefetch): on the 2-core machine it beat
every fixed count up to 128 for small batches (bench/slots.py); images gain up to 64 slots, which takes more
memory than the default does (13 slots, 125 MB); DataLoader gets its own sweep."""


def run_prefetch(workload: Workload, workers: int, seconds: float, min_samples: int = 0, pool_class: type = Pool,
                 runner: str = "prefetch", options: dict[str, Any] | None = None) -> Result:
    """prefetch.Pool (or `pool_class`, e.g. prefetch.ray.Pool, with its `options`) over the workload's source.

    Samples are counted per stream for the mux workload, to check the weights.
    """
    counts = np.zeros(max(workload.streams, 1), dtype=np.int64)

    def count_streams(batch: Any) -> None:
        if workload.streams > 1:
            counts[:] += np.bincount(batch["Y"], minlength=workload.streams)

    start = time.perf_counter()
    with pool_class(workload.source(), batch_size=workload.batch_size, workers=workers, prefetch=PREFETCH_SLOTS,
                    transform=workload.transform, seed=0, **(options or {})) as pool:
        it = iter(pool)
        budget = max(seconds, 0.0)
        result = _timed(workload, runner, start, it, lambda b: b.size, budget, {"workers": workers}, count_streams)
        result.settings["prefetch"] = pool.options.prefetch  # sized once the first batch's schema was known
        while counts.sum() < min_samples:
            count_streams(next(it))
        stats = pool.stats()
    result.extra["trainer_wait_fraction"] = round(stats["trainer_wait_fraction"], 3)
    result.extra["worker_busy_fraction"] = {w: round(v, 3) for w, v in stats["worker_busy_fraction"].items()}
    if workload.streams > 1:
        result.extra["proportions"] = (counts / counts.sum()).round(5).tolist()
        result.extra["proportion_samples"] = int(counts.sum())
    return result


def run_prefetch_torch(workload: Workload, workers: int, seconds: float) -> Result:
    """prefetch.torch.Loader on the CPU over the same pool: what the adapter's tensors cost."""
    import prefetch.torch

    start = time.perf_counter()
    with prefetch.torch.Loader(workload.source(), batch_size=workload.batch_size, workers=workers,
                               prefetch=PREFETCH_SLOTS, transform=workload.transform, seed=0) as loader:
        first = next(iter(loader))
        key = "Y" if isinstance(first, dict) else 1
        del first
        return _timed(workload, "prefetch.torch.Loader", start, iter(loader), lambda b: len(b[key]), seconds,
                      {"workers": workers})


def _batches_in_process(workload: Workload) -> Iterator[dict[str, np.ndarray]]:
    """Stack samples into a preallocated batch in this process, as a worker would write rows."""
    samples = workload.samples(seed=0)
    first = next(samples)
    batch = {k: np.empty((workload.batch_size, *np.shape(v)), np.asarray(v).dtype) for k, v in first.items()}
    pending = [first]
    while True:
        for row in range(workload.batch_size):
            sample = pending.pop() if pending else next(samples)
            for key, value in sample.items():
                batch[key][row] = value
        yield batch


def run_in_process(workload: Workload, seconds: float) -> Result:
    """The ceiling for one core: the same samples and transform, no processes."""
    start = time.perf_counter()
    return _timed(workload, "in-process", start, _batches_in_process(workload), lambda b: workload.batch_size,
                  seconds, {})


def run_torch(workload: Workload, workers: int, seconds: float, prefetch_factor: int) -> Result:
    """torch DataLoader over an IterableDataset of the same samples, one seed per worker."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class Samples(IterableDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            return workload.samples(seed=0 if info is None else 1000 + info.id)

    torch.set_num_threads(1)
    start = time.perf_counter()
    loader = DataLoader(Samples(), batch_size=workload.batch_size, num_workers=workers,
                        prefetch_factor=prefetch_factor, persistent_workers=False)
    it = iter(loader)
    try:
        return _timed(workload, "torch DataLoader", start, it, lambda b: len(b["Y"]), seconds,
                      {"workers": workers, "prefetch_factor": prefetch_factor})
    finally:
        it._shutdown_workers()
        del it


def run_pescador(workload: Workload, seconds: float) -> Result:
    """pescador's ZMQStreamer over buffer_stream(batch_size), its fastest configuration (one worker)."""
    import pescador

    def batches() -> Iterator[dict[str, np.ndarray]]:
        yield from pescador.buffer_stream(workload.samples(seed=0), workload.batch_size)

    start = time.perf_counter()
    streamer = pescador.ZMQStreamer(pescador.Streamer(batches))
    it = iter(streamer)
    try:
        return _timed(workload, "pescador ZMQStreamer", start, it, lambda b: len(b["Y"]), seconds, {"workers": 1})
    finally:
        it.close()


def run_copyto(workload: Workload, seconds: float) -> Result:
    """numpy.copyto of one batch's bytes: the physical limit for moving them once."""
    nbytes = workload.bytes_per_sample * workload.batch_size
    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    copies = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.copyto(dst, src)
        copies += 1
    rate = copies * workload.batch_size / (time.perf_counter() - t0)
    return Result(workload.name, "numpy.copyto", rate, rate * workload.bytes_per_sample / 1e6, None)
