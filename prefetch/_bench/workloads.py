"""The benchmark workloads, as sample generators and sources every runner shares.

DESIGN.md §5's four (small, image, cpu, mux), and two that mix many streams with a
finite rate, where the mux process's planning is the work: `mux-rate` (30 streams,
16 active, about 64 samples an activation) and `activation` (pescador's "Option 2":
3 streams whose generator spends about 30 ms starting, one active at a time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._mux import StochasticMux
from .._streamer import Streamer
from .._worker_info import worker_info

MUX_WEIGHTS = (0.5, 0.3, 0.2)
START_ROWS = 220_000
"""Values the activation workload's streams compute at start: about 30 ms of numpy work here."""
CPU_ROUNDS = 30
"""Blur rounds of the cpu workload's transform: about 1 ms of numpy work per sample here."""


def _seed(default: int) -> int:
    info = worker_info()
    return info.seed if info is not None else default


def small_samples(label: int = 0, seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Endless {"X": float32 (128,), "Y": int64} samples drawn from a table made once."""
    rng = np.random.default_rng(_seed(label) if seed is None else seed)
    table = rng.standard_normal((1024, 128)).astype(np.float32)
    y = np.int64(label)
    while True:
        for i in rng.integers(0, 1024, size=4096).tolist():
            yield {"X": table[i], "Y": y}


def slow_start_samples(label: int = 0, seed: int | None = None) -> Iterator[dict[str, Any]]:
    """small samples from a table computed when the stream starts (about 30 ms): a stream that loads its data."""
    rng = np.random.default_rng(_seed(label) if seed is None else seed)
    values = np.cumsum(rng.standard_normal(START_ROWS * 8), dtype=np.float64).reshape(-1, 8)
    table = np.repeat(values[::128, :1], 128, axis=1).astype(np.float32)[:2048]
    y = np.int64(label)
    while True:
        for i in rng.integers(0, len(table), size=4096).tolist():
            yield {"X": table[i], "Y": y}


def rate_mux(seed: int | None = None) -> StochasticMux:
    """mux-rate: 30 small streams, 16 active at a time, each activation about 64 samples."""
    return StochasticMux([Streamer(small_samples, k) for k in range(30)], n_active=16, rate=64, random_state=seed)


def activation_mux(seed: int | None = None) -> StochasticMux:
    """activation: 3 streams that take about 30 ms to start, one active at a time for about 1000 samples."""
    return StochasticMux([Streamer(slow_start_samples, k) for k in range(3)], n_active=1, rate=1000,
                         random_state=seed)


def _cycled_images(shape: tuple[int, ...], count: int, seed: int | None) -> Iterator[dict[str, Any]]:
    """Endless {"X": uint8 image, "Y": int64} samples cycling through `count` random images made once."""
    rng = np.random.default_rng(_seed(0) if seed is None else seed)
    images = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
    i = 0
    while True:
        yield {"X": images[i % count], "Y": np.int64(i)}
        i += 1


def image_samples(seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Endless {"X": uint8 (224, 224, 3), "Y": int64} samples: moving bytes is the work."""
    return _cycled_images((224, 224, 3), 16, seed)


def cpu_samples(seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Endless {"X": uint8 (64, 64, 3), "Y": int64} samples, to be blurred by `cpu_transform`."""
    return _cycled_images((64, 64, 3), 64, seed)


def cpu_transform(sample: dict[str, Any]) -> dict[str, Any]:
    """About 1 ms of numpy work: repeated 3-tap diagonal blurs of the image."""
    f = sample["X"].astype(np.float32)
    for _ in range(CPU_ROUNDS):
        f = (f[:-2, :-2] + f[1:-1, 1:-1] + f[2:, 2:]) / 3.0
        f = np.pad(f, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return {"X": f.clip(0, 255).astype(np.uint8), "Y": sample["Y"]}


@dataclass(frozen=True)
class Workload:
    """A benchmark workload: how to make its samples and batches.

    Attributes:
        name: small, image, cpu or mux.
        batch_size: rows per batch.
        bytes_per_sample: bytes of array data in one sample.
        make: a generator function (seed -> samples) for one stream; mux workloads mix several.
        transform: applied to each sample by every runner (None for none).
        streams: how many streams the workload mixes (1 but for mux).
        mixer: for a workload of many non-replicated streams, its mux (seed -> mux); `make` is then unused.
    """

    name: str
    batch_size: int
    bytes_per_sample: int
    make: Callable[..., Iterator[dict[str, Any]]]
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    streams: int = 1
    mixer: Callable[[int | None], StochasticMux] | None = None

    def source(self) -> Streamer:
        """The prefetch source: the mixer's mux, else every stream replicated, so each worker runs a share."""
        if self.mixer is not None:
            return self.mixer(None)
        if self.streams == 1:
            return Streamer(self.make).replicated()
        parts = [Streamer(self.make, k).replicated() for k in range(self.streams)]
        return StochasticMux(parts, n_active=self.streams, rate=None, weights=list(MUX_WEIGHTS))

    def samples(self, seed: int) -> Iterator[dict[str, Any]]:
        """One process's samples (the mux's streams mixed in process) with the transform applied."""
        if self.mixer is not None:
            it = self.mixer(seed).iterate()
        elif self.streams == 1:
            it = self.make(seed=seed)
        else:
            parts = [Streamer(self.make, k, seed + k) for k in range(self.streams)]
            it = StochasticMux(parts, n_active=self.streams, rate=None, weights=list(MUX_WEIGHTS),
                               random_state=seed).iterate()
        if self.transform is None:
            return it
        return map(self.transform, it)


WORKLOADS = {
    "small": Workload("small", 256, 128 * 4 + 8, small_samples),
    "image": Workload("image", 64, 224 * 224 * 3 + 8, image_samples),
    "cpu": Workload("cpu", 64, 64 * 64 * 3 + 8, cpu_samples, cpu_transform),
    "mux": Workload("mux", 256, 128 * 4 + 8, small_samples, streams=3),
    "mux-rate": Workload("mux-rate", 256, 128 * 4 + 8, small_samples, mixer=rate_mux),
    "activation": Workload("activation", 64, 128 * 4 + 8, slow_start_samples, mixer=activation_mux),
}
