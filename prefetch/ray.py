"""prefetch.ray: a pool whose workers are Ray actors, anywhere in the cluster the trainer is connected to.

    ray.init(address="auto")                       # or ray.init() for this machine alone
    pool = prefetch.ray.Pool(mux, batch_size=256, workers=32, num_cpus=1, resources={"cpu_node": 1})
    for batch in pool: ...

The mux process and the shared-memory slots stay beside the trainer; each worker
runs in an actor that Ray places, with `num_cpus`, custom `resources` (to pin
workers to CPU-only nodes) and any other `actor_options`. A worker on the trainer's
node writes rows into the slots in place; one on another node writes them into its
own memory, and its relay (a thread beside the trainer) takes them through Ray's
object store into the slots. Everything else is the local pool's: the same batches
for a seed and worker count, weights, `state_dict` and resume, `on_error`, and an
actor that dies is restarted (up to `max_restarts`) with no sample lost or repeated.
`close()` kills the actors. Ray is the engine: nodes, placement and transfers are
its job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ray

from ._errors import ArgumentError
from ._pool import Pool as _LocalPool
from ._rayworker.actor import WorkerActor
from ._rayworker.relay import Placement, RayWorker

__all__ = ["Pool"]

_ACTOR: Any = None


def _actor_class() -> Any:
    """The Ray actor class of a worker: `serve` runs for the worker's life while `take` answers beside it."""
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = ray.remote(max_concurrency=2)(WorkerActor)
    return _ACTOR


def _check_placeable(demand: dict[str, float], workers: int) -> None:
    """Refuse worker actors that the cluster's nodes could never hold all at once: the pool would wait for ever."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    room = sum(min((int(have.get(name, 0) / amount + 1e-9) for name, amount in demand.items()), default=workers)
               for have in nodes)
    if room >= workers:
        return
    wanted = ", ".join(f"{name}={amount:g}" for name, amount in demand.items())
    offered = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(have.items()) if not k.startswith("node:"))
                        for have in nodes)
    raise ArgumentError(f"prefetch.ray.Pool: {workers} worker actors each asking for {wanted} do not fit in the Ray "
                        f"cluster, whose nodes hold {room} of them (nodes offer: {offered or 'none'}); lower workers "
                        "or the per-actor demand (num_cpus=0.5 lets two workers share a CPU)")


class Pool(_LocalPool):
    """`prefetch.Pool` with its workers as Ray actors (see the module's docstring).

    Args beyond `prefetch.Pool`'s:
        workers: worker actors (required: the cluster, not this machine, decides how many make sense).
        num_cpus: CPUs Ray reserves for each worker actor.
        resources: custom Ray resources each worker actor needs, e.g. {"cpu_node": 1}.
        actor_options: any other option of Ray's `.options()` for the actors (scheduling_strategy,
            runtime_env, memory, ...).

    Ray is initialised with `ray.init()` if it was not (as Ray itself does on first use). Workers
    that the cluster's nodes could not hold all at once are refused at construction.
    """

    def __init__(self, source: Any, *, batch_size: int, workers: int, num_cpus: float = 1.0,
                 resources: dict[str, float] | None = None, actor_options: dict[str, Any] | None = None,
                 **pool_options: Any) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ArgumentError(f"prefetch.ray.Pool: workers must be an int >= 1, got {workers!r}")
        if not isinstance(num_cpus, (int, float)) or isinstance(num_cpus, bool) or num_cpus < 0:
            raise ArgumentError(f"prefetch.ray.Pool: num_cpus must be a number >= 0, got {num_cpus!r}")
        if resources is not None and not (isinstance(resources, dict) and all(
                isinstance(k, str) and isinstance(v, (int, float)) and v >= 0 for k, v in resources.items())):
            raise ArgumentError(f"prefetch.ray.Pool: resources must map names to amounts >= 0, got {resources!r}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise ArgumentError(f"prefetch.ray.Pool: actor_options must be a dict, got {actor_options!r}")
        if not ray.is_initialized():
            ray.init()
        self._actor_options = {**(actor_options or {}), "num_cpus": num_cpus, "resources": dict(resources or {})}
        demand = {"CPU": float(num_cpus), **{k: float(v) for k, v in (resources or {}).items()}}
        _check_placeable({k: v for k, v in demand.items() if v > 0}, workers)
        self._placement: Placement | None = None
        super().__init__(source, batch_size=batch_size, workers=workers, **pool_options)

    def _launch_worker(self, worker: int, generation: int) -> RayWorker:
        if self._placement is None:
            self._placement = Placement(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(),
                                        self._worker_config.endpoint)
        config = dataclasses.replace(self._worker_config, worker_id=worker, generation=generation)
        return RayWorker(_actor_class(), self._actor_options, config, self._placement)
