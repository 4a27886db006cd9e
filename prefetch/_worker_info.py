"""worker_info(): what a stream running in a pool worker knows about where it runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerInfo:
    """Where the calling stream runs.

    Attributes:
        id: index of this worker process, 0 .. num_workers - 1.
        num_workers: worker processes in the pool.
        replica: which replica of the stream this is (0 for a stream that is not replicated).
        num_replicas: replicas of the stream (1 unless the stream runs as one replica per worker).
        seed: a seed for this stream activation, derived from the pool seed; distinct per
            replica and per activation, and the same from run to run for a fixed pool seed.
        activation: how many times the pool started this stream before (for a stream that
            is the whole source, the epoch number); the same for all replicas.
        rank: which training process (torchrun rank) runs this pool, 0 .. world_size - 1.
        world_size: training processes, each with its own pool. A finite replicated stream
            that shards itself reads shard `rank * num_replicas + replica` of
            `world_size * num_replicas`.
    """

    id: int
    num_workers: int
    replica: int
    num_replicas: int
    seed: int
    activation: int = 0
    rank: int = 0
    world_size: int = 1


class _Current:
    """The worker loop's record of the stream it is running; None outside workers."""

    info: WorkerInfo | None = None


def worker_info() -> WorkerInfo | None:
    """The WorkerInfo of the stream being run, in a pool worker; None in the trainer."""
    return _Current.info


def set_worker_info(info: WorkerInfo | None) -> None:
    """Record which stream the worker is running (worker loop only)."""
    _Current.info = info
