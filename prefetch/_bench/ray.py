"""`prefetch bench --ray`: prefetch.ray.Pool beside the local pool, on a Ray cluster started for the run.

Without an address, two Ray nodes start on this machine: the trainer's (head) node
and a second one. Worker actors pinned to the head node write rows into the slots in
place; actors pinned to the second node send them through Ray's object store, as
actors on another machine would (without the network). With `--ray-address`, the
actors go wherever that cluster places them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

NEAR, FAR = "prefetch_bench_near", "prefetch_bench_far"

SAME_NODE = "prefetch.ray, same node"
OTHER_NODE = "prefetch.ray, other node"
CLUSTER = "prefetch.ray"


@contextlib.contextmanager
def cluster(address: str | None) -> Iterator[dict[str, dict[str, Any]]]:
    """Connect to Ray for the run and yield {runner name: prefetch.ray.Pool options}; shut it all down after."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster of this run, on this machine
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        try:
            yield {CLUSTER: {}}
        finally:
            ray.shutdown()
        return
    from ray.cluster_utils import Cluster

    cores = os.cpu_count() or 1
    local = Cluster(initialize_head=True, head_node_args={"num_cpus": cores, "resources": {NEAR: 1000},
                                                          "include_dashboard": False})
    try:
        local.add_node(num_cpus=cores, resources={FAR: 1000})
        ray.init(address=local.address, log_to_driver=False)
        yield {SAME_NODE: {"num_cpus": 0, "resources": {NEAR: 1}},
               OTHER_NODE: {"num_cpus": 0, "resources": {FAR: 1}}}
    finally:
        ray.shutdown()
        local.shutdown()


TRANSFER = "ray.get from other node"
"""The ceiling of the other-node runner: Ray moving batch-sized arrays between its nodes, nothing else."""


def run_transfer(workload: Any, seconds: float, options: dict[str, Any]) -> Any:
    """Batches of the workload's size, made once in an actor on the other node and fetched four at a time."""
    import numpy as np
    import ray

    from .runners import Result

    @ray.remote(max_concurrency=1)
    class Source:
        def __init__(self, nbytes: int) -> None:
            self.batch = np.ones(nbytes, np.uint8)

        def get(self) -> np.ndarray:
            return self.batch

    nbytes = workload.bytes_per_sample * workload.batch_size
    source = Source.options(**options).remote(nbytes)
    ray.get(source.get.remote())
    count, inflight = 0, [source.get.remote() for _ in range(4)]
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ray.get(inflight.pop(0))
        inflight.append(source.get.remote())
        count += workload.batch_size
    rate = count / (time.perf_counter() - start)
    ray.kill(source)
    return Result(workload.name, TRANSFER, rate, rate * workload.bytes_per_sample / 1e6, None)
