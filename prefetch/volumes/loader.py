"""bind_data_generator: stream a volume query into training through the pool.

Each phase is one replicated stream over its data points. All replicas draw the same
per-epoch permutation (seeded by the pool seed and the epoch); replica r reads the
batches r, r + R, r + 2R, ... of it, and the pool takes a batch from each replica in
turn, so the order is the permutation's whatever the number of workers, and every
data point appears exactly once per epoch. Workers fetch files ahead of need into the
local cache with a few threads, so the first batch waits only for its own files.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .._batch import Batch
from .._errors import ArgumentError, check_int
from .._pool import Pool, resolve_rank
from .._sizes import parse_size
from .._streamer import Streamer
from .._worker_info import worker_info
from .cache import Held
from .errors import FetchError
from .selection import PHASES, DataPoint
from .store import Source, Volume

FETCH_THREADS = 8
"""Files a worker fetches at once, ahead of the sample it is deserializing."""


@dataclass(frozen=True)
class Items:
    """What a worker needs to turn data point number i of a phase into a sample."""

    source: Source
    points: tuple[DataPoint, ...]
    callback: Callable[[list[str], list[dict[str, Any]]], Any]
    batch_size: int
    shuffle: bool
    seed: int
    rank: int = 0
    world_size: int = 1

    def per_rank(self) -> int:
        """Data points each rank gets per epoch: the same for every rank, so none waits at a collective."""
        return math.ceil(len(self.points) / self.world_size)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's data point numbers for an epoch: its part of a permutation all ranks share.

        The permutation is padded by wrapping around to a multiple of world_size, so
        ranks get equal parts that are disjoint but for at most world_size - 1 repeats.
        """
        n = len(self.points)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.world_size == 1:
            return order
        return np.resize(order, self.per_rank() * self.world_size)[self.rank::self.world_size]

    def share(self, epoch: int, replica: int, replicas: int) -> np.ndarray:
        """The data point numbers of this replica's batches, in order."""
        order, size = self.order(epoch), self.batch_size
        batches = [order[b * size:(b + 1) * size] for b in range(replica, math.ceil(len(order) / size), replicas)]
        return np.concatenate(batches) if batches else np.empty(0, dtype=np.int64)


FETCH_WAIT_S = 900.0
"""Longest wait for one data point's files; each remote read also gives up on a stalled transfer (remote.py)."""


def _fetch(items: Items, point: DataPoint, cache: Any) -> tuple[list[str], list[dict[str, Any]], list[Held]]:
    """A data point's local file names and metadatas, its files held in the cache until the sample is made."""
    names, metadatas, held = [], [], []
    try:
        for name in sorted(point.files):
            info = point.files[name]
            held.append(items.source.hold(info["sha256"], info["size"], cache))
            names.append(str(held[-1].path))
            metadatas.append({**point.metadata, "@id": point.id, "@name": name, "@size": info["size"]})
    except BaseException:
        _release(held)
        raise
    return names, metadatas, held


def _release(held: list[Held]) -> None:
    for h in held:
        h.release()


def phase_samples(items: Items, start: int = 0) -> Iterator[Any]:
    """The samples of this replica's share of one epoch from position `start`, files fetched a few ahead."""
    info = worker_info()
    epoch, replica, replicas = (info.activation, info.replica, info.num_replicas) if info else (0, 0, 1)
    share = items.share(epoch, replica, replicas)[start:].tolist()
    cache = None if items.source.local else items.source.cache()
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(FETCH_THREADS) as threads:
        try:
            upcoming = iter(share)
            for j in upcoming:
                pending.append(threads.submit(_fetch, items, items.points[j], cache))
                if len(pending) >= 2 * FETCH_THREADS:
                    break
            while pending:
                try:
                    names, metadatas, held = pending.popleft().result(timeout=FETCH_WAIT_S)
                except FutureTimeout:
                    raise FetchError(f"the files of a data point took over {FETCH_WAIT_S:g} s to fetch") from None
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append(threads.submit(_fetch, items, items.points[nxt], cache))
                try:
                    sample = items.callback(names, metadatas)
                finally:
                    _release(held)
                yield sample
        finally:
            for future in pending:
                if not future.cancel() and future.exception() is None:
                    _release(future.result()[2])


class PhaseStream(Streamer):
    """One phase of a volume query as a replicated stream that can jump to any position.

    Its order does not depend on the number of replicas, so a pool resumes it with any
    worker count; `seek` skips ahead without fetching a file.
    """

    replicas = True
    order_free = True

    def __init__(self, items: Items) -> None:
        super().__init__(phase_samples, items)
        self.items = items

    def seek(self, position: int) -> Iterator[Any]:
        return phase_samples(self.items, position)


class Loader:
    """The batches of one phase, epoch after epoch, through a pool started on first use."""

    def __init__(self, name: str, items: Items, drop_last: bool, workers: int | None,
                 pool_options: dict[str, Any]) -> None:
        self.name, self.items, self.drop_last, self.workers = name, items, drop_last, workers
        self.pool_options = pool_options
        self.pool: Pool | None = None

    @property
    def points(self) -> tuple[DataPoint, ...]:
        return self.items.points

    def __len__(self) -> int:
        """Batches per epoch (for this rank)."""
        n, size = self.items.per_rank(), self.items.batch_size
        return n // size if self.drop_last else math.ceil(n / size)

    def _start(self, state: dict[str, Any] | None = None) -> Pool:
        self.close()
        self.pool = Pool(PhaseStream(self.items), batch_size=self.items.batch_size, workers=self.workers,
                         seed=self.items.seed, last_batch="drop" if self.drop_last else "pad",
                         rank=self.items.rank, world_size=self.items.world_size, state=state, **self.pool_options)
        return self.pool

    def __iter__(self) -> Iterator[Batch]:
        if len(self) == 0:
            return iter(())
        return iter(self.pool or self._start())

    def state_dict(self) -> dict[str, Any] | None:
        """Where this phase's training stands (see Pool.state_dict); None before the first batch."""
        return None if self.pool is None else self.pool.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Resume from a state_dict() before iterating (the pool starts with it)."""
        if state is not None:
            self._start(state)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __repr__(self) -> str:
        return f"Loader({self.name}: {len(self.items.points)} data points, {len(self)} batches per epoch)"


class Phases(NamedTuple):
    """The loaders of a split query, in @split order."""

    train: Loader
    test: Loader
    validation: Loader


class DataGenerator:
    """A query bound to a volume and a deserialization callback; `flow()` gives its loaders."""

    def __init__(self, volume: Volume | str, query: str, callback: Callable[..., Any], batch_size: int,
                 drop_last: bool, workers: int | None, shuffle: bool, cache_dir: Any, cache_limit: Any,
                 seed: int | None, rank: int | None, world_size: int | None, pool_options: dict[str, Any]) -> None:
        if not callable(callback):
            raise ArgumentError(f"bind_data_generator: deserialization_callback must be callable, got {callback!r}")
        check_int(batch_size, 1, "bind_data_generator: batch_size")
        self.volume = Volume.open(volume, cache_dir, cache_limit) if not isinstance(volume, Volume) else volume
        self.result = self.volume.query(query)
        base = self.volume.source
        self.source = Source(base.url, base.cache_dir if cache_dir is None else str(cache_dir),
                             base.cache_limit if cache_limit is None else parse_size(cache_limit))
        self.callback, self.batch_size, self.drop_last = callback, batch_size, drop_last
        self.workers, self.shuffle, self.pool_options = workers, shuffle, pool_options
        self.seed = self.result.query.seed if seed is None else seed
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.loaders: list[Loader] = []

    def _loader(self, name: str, points: list[DataPoint]) -> Loader:
        items = Items(self.source, tuple(points), self.callback, self.batch_size, self.shuffle, self.seed,
                      self.rank, self.world_size)
        loader = Loader(name, items, self.drop_last, self.workers, self.pool_options)
        self.loaders.append(loader)
        return loader

    def flow(self) -> Phases:
        """(train, test, validation) loaders, always three: without @split, train has every data point.

        `train, test, validation = gen.flow()` unpacks whatever the query; an empty
        phase is a loader of no batches.
        """
        if self.result.query.split is None:
            phases = {"train": self.result.points, "test": [], "validation": []}
        else:
            phases = {name: self.result.phase(name) for name in PHASES}
        return Phases(*(self._loader(name, phases[name]) for name in PHASES))

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()


def bind_data_generator(volume: Volume | str, query: str, deserialization_callback: Callable[..., Any],
                        batch_size: int = 32, drop_last: bool = True, workers: int | None = None,
                        shuffle: bool = True, cache_dir: Any = None, cache_limit: Any = None,
                        seed: int | None = None, rank: int | None = None, world_size: int | None = None,
                        **pool_options: Any) -> DataGenerator:
    """Bind a volume query to a callback that turns a data point's files into a sample.

    `deserialization_callback(file_names, metadatas)` runs in the workers with the local
    paths of one data point's files (sorted by name) and one metadata dict per file (the
    data point's metadata plus "@id", "@name" and "@size"); it returns a sample, an
    (x, y) tuple or a dict. `drop_last=True` drops a short last batch; False pads it
    with zeros (`batch.size` tells the valid rows). With several training processes,
    `rank` and `world_size` (default: torchrun's RANK and WORLD_SIZE) give each rank a
    disjoint, equal part of every epoch. Other keyword arguments go to `Pool`.
    """
    return DataGenerator(volume, query, deserialization_callback, batch_size, drop_last, workers, shuffle,
                         cache_dir, cache_limit, seed, rank, world_size, pool_options)
