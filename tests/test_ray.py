"""prefetch.ray.Pool on a real Ray cluster of two nodes on this machine (Ray's own cluster utilities).

The head node runs the trainer's driver; the second node offers the custom resource
"far", so workers asked to need it run in actors on another Ray node, and their rows
travel through Ray's object store. Workers on the head node write the slots in place.
"""

from __future__ import annotations

import json
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import prefetch  # noqa: E402
import prefetch.ray  # noqa: E402
from prefetch import ArgumentError, RoundRobinMux, StochasticMux, Streamer, WorkerError  # noqa: E402
from prefetch.testing import assert_resumes_exactly, take  # noqa: E402

from . import streams  # noqa: E402

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent

FAR = {"resources": {"far": 1}, "num_cpus": 0}
"""Worker actors on the second node: rows cross Ray's object store."""
NEAR = {"num_cpus": 0}
"""Worker actors wherever Ray likes; on this cluster only the head node can take them (the other needs `far`)."""
PLACES = {"another node": FAR, "the trainer's node": {"num_cpus": 1}}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A head node (1 CPU) and a second node (2 CPUs, resource `far`), started before the leak guard looks."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    store = 150 * 2**20
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                           "object_store_memory": store})
    head.add_node(num_cpus=2, resources={"far": 4}, object_store_memory=store)
    ray.init(address=head.address, log_to_driver=False)
    multiprocessing.forkserver.ensure_running()  # pools start from it while Ray is connected
    yield head
    ray.shutdown()
    head.shutdown()


def mixed(length=300):
    parts = [Streamer(streams.random_walk, t, length) for t in range(3)]
    return StochasticMux(parts, n_active=2, rate=16, mode="exhaustive", random_state=3)


def batches(pool):
    return [(b.epoch, b.index, {k: np.array(v) if isinstance(v, np.ndarray) else list(v) for k, v in b.items()})
            for b in pool]


def same(a, b):
    assert len(a) == len(b)
    for (ea, ia, fa), (eb, ib, fb) in zip(a, b, strict=True):
        assert (ea, ia) == (eb, ib)
        assert fa.keys() == fb.keys()
        for key in fa:
            if isinstance(fa[key], np.ndarray):
                np.testing.assert_array_equal(fa[key], fb[key])
            else:
                assert fa[key] == fb[key]


def actor_pids(pool):
    deadline = time.monotonic() + 30
    handles = [proc for _, proc in pool._res.processes[1:]]
    while any(h.pid is None for h in handles) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [h.pid for h in handles]


def gone(pids, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("place", sorted(PLACES))
def test_same_batches_as_the_local_pool(place):
    with prefetch.Pool(mixed(), batch_size=16, workers=2, seed=7) as pool:
        expected = batches(pool)
    with prefetch.ray.Pool(mixed(), batch_size=16, workers=2, seed=7, **PLACES[place]) as pool:
        got = batches(pool)
        assert pool.stats()["restarts"] == 0
    same(got, expected)


def test_object_fields_travel_beside_rows_from_another_node():
    with prefetch.ray.Pool(Streamer(streams.with_objects, 100), batch_size=16, workers=2, **FAR) as pool:
        got = batches(pool)
    assert [n for _, _, f in got for n in f["name"]] == [f"item-{i}" for i in range(100)]
    assert [float(x) for _, _, f in got for x in f["x"]] == list(range(100))


def test_tuple_samples_and_partial_rows_cross_the_object_store():
    source = RoundRobinMux([Streamer(streams.pairs, 37), Streamer(streams.pairs, 21)])
    with prefetch.Pool(source, batch_size=8, workers=2) as pool:
        expected = [(np.array(b[0]), np.array(b[1])) for b in pool]
    with prefetch.ray.Pool(source, batch_size=8, workers=2, **FAR) as pool:
        got = [(np.array(b[0]), np.array(b[1])) for b in pool]
    assert len(got) == len(expected) == 8
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_sigkilled_actor_is_restarted_and_nothing_is_lost_or_repeated(place):
    source = StochasticMux([Streamer(streams.numbered, t, 400) for t in range(3)], n_active=2, rate=None,
                           mode="exhaustive", random_state=9)
    with prefetch.Pool(source, batch_size=16, workers=2, seed=5) as pool:
        expected = batches(pool)
    with prefetch.ray.Pool(source, batch_size=16, workers=2, seed=5, **PLACES[place]) as pool:
        pids = actor_pids(pool)
        got = []
        for i, batch in enumerate(pool):
            got.append((batch.epoch, batch.index, {k: np.array(v) for k, v in batch.items()}))
            if i in (5, 30):
                os.kill(pids[0 if i == 5 else 1], signal.SIGKILL)
                time.sleep(0.3)
        assert pool.stats()["restarts"] == 2
    same(got, expected)
    seen = sorted(int(x) for _, _, f in got for x in f["x"][:, 0])
    assert seen == sorted(t * 1_000_000 + i for t in range(3) for i in range(400))


def test_a_worker_that_exits_in_user_code_is_restarted_and_resumes_exactly(tmp_path):
    marker = str(tmp_path / "exited")
    with prefetch.ray.Pool(Streamer(streams.exit_once_at, 300, 137, marker), batch_size=16, workers=1,
                           **FAR) as pool:
        got = [int(y) for b in pool for y in b["y"]]
        assert pool.stats()["restarts"] == 1
    assert got == list(range(300))


def test_past_max_restarts_the_error_names_the_worker_and_rays_cause():
    with prefetch.ray.Pool(Streamer(streams.exit_always_at, 300, 20), batch_size=8, workers=1, max_restarts=1,
                           **FAR) as pool, pytest.raises(prefetch.WorkerDiedError, match="worker 0") as info:
        list(pool)
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "restarted workers 1 times" in notes
    assert "Actor" in notes  # Ray's own account of the death


def test_close_leaves_no_actor_behind():
    pool = prefetch.ray.Pool(Streamer(streams.endless, 0), batch_size=8, workers=2, **FAR)
    next(iter(pool))
    pids = actor_pids(pool)
    assert all(_running(pid) for pid in pids)
    pool.close()
    assert gone(pids), f"actors {pids} still run after close()"


def test_resume_from_state_dict_is_exact():
    def make(state=None):
        source = StochasticMux([Streamer(streams.endless, t) for t in range(3)], n_active=2, rate=8)
        return prefetch.ray.Pool(source, batch_size=8, workers=2, seed=11, state=state, **FAR)

    assert_resumes_exactly(make, steps=[3, 17], after=3)


def test_set_weights_moves_the_shares():
    source = StochasticMux([Streamer(streams.endless, t) for t in range(2)], n_active=2, rate=None,
                           weights=[0.5, 0.5])
    with prefetch.ray.Pool(source, batch_size=64, workers=2, seed=1, **FAR) as pool:
        at = pool.set_weights([1.0, 0.0])
        tags = [int(t) for b in take(pool, at + 6)[at:] for t in b["fields"]["tag"]]
    assert tags and set(tags) == {0}


def test_user_errors_name_the_stream_and_skip_counts():
    with prefetch.ray.Pool(Streamer(streams.raises_at, 50, 20), batch_size=8, workers=1, **FAR) as pool, \
            pytest.raises(WorkerError, match="corrupt record 20") as info:
        list(pool)
    assert "raises_at" in str(info.value)
    with prefetch.ray.Pool(Streamer(streams.raises_at, 50, 20), batch_size=8, workers=1, on_error="skip",
                           **FAR) as pool:
        got = [int(y) for b in pool for y in b["y"]]
        assert pool.stats()["skipped"] >= 1
    assert got == list(range(20))


def test_workers_the_cluster_cannot_hold_are_refused_at_once():
    """Actors Ray cannot place would wait for ever, and the pool with them."""
    with pytest.raises(ArgumentError, match=r"gpu_node=1 do not fit.*hold 0 of them"):
        prefetch.ray.Pool(Streamer(streams.endless, 0), batch_size=8, workers=1, resources={"gpu_node": 1})
    with pytest.raises(ArgumentError, match=r"5 worker actors.*far=1.*hold 4 of them"):
        prefetch.ray.Pool(Streamer(streams.endless, 0), batch_size=8, workers=5, **FAR)
    with pytest.raises(ArgumentError, match=r"4 worker actors.*CPU=1.*hold 3 of them"):
        prefetch.ray.Pool(Streamer(streams.endless, 0), batch_size=8, workers=4)
    with pytest.raises(ArgumentError, match="workers"):
        prefetch.ray.Pool(Streamer(streams.endless, 0), batch_size=8, workers=0)


TRAINER = """
import sys, ray, prefetch.ray
from tests import streams
if __name__ == "__main__":
    ray.init(address=sys.argv[1], log_to_driver=False)
    pool = prefetch.ray.Pool(prefetch.Streamer(streams.endless, 0), batch_size=8, workers=2,
                             resources={"far": 1}, num_cpus=0)
    next(iter(pool))
    handles = [proc for _, proc in pool._res.processes]
    print(pool._res.segments[0].name, handles[0].pid, *[h.pid for h in handles[1:]], flush=True)
    for batch in pool:
        pass
"""


def test_a_sigkilled_trainer_takes_its_actors_mux_process_and_shared_memory_with_it(cluster, tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    trainer = subprocess.Popen([sys.executable, str(script), cluster.address], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        name, *pids = trainer.stdout.readline().split()
        assert name and len(pids) == 3, "the trainer did not start its pool"
        assert Path("/dev/shm", name).exists()
        trainer.kill()
        trainer.wait(5)
        assert gone([int(p) for p in pids], within=30), "the mux process or an actor outlived the trainer"
        deadline = time.monotonic() + 5
        while Path("/dev/shm", name).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path("/dev/shm", name).exists(), "shared memory outlived the trainer"
    finally:
        trainer.kill()
        trainer.wait(5)
        trainer.stdout.close()


def test_the_torch_loader_takes_a_ray_pool():
    torch = pytest.importorskip("torch")
    import prefetch.torch

    with prefetch.ray.Pool(Streamer(streams.numbered, 0, 40), batch_size=16, workers=1, **FAR) as pool, \
            prefetch.torch.Loader(pool) as loader:
        got = [batch for batch in loader]
    assert [len(b["y"]) for b in got] == [16, 16, 8]
    assert all(isinstance(b["x"], torch.Tensor) for b in got)
    assert torch.cat([b["y"] for b in got]).tolist() == list(range(40))


def test_bench_ray_measures_both_placements_and_the_transfer_ceiling(tmp_path):
    """`prefetch bench --ray` starts its own two-node cluster (in a process of its own here) and reports all three."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "prefetch.cli", "bench", "--workloads", "small", "--workers", "1",
                           "--ray", "--quick", "--seconds", "0.3", "--no-progress", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    rates = {r["runner"]: r["samples_per_s"] for r in data["results"]}
    assert {"prefetch", "prefetch.ray, same node", "prefetch.ray, other node", "ray.get from other node"} <= set(rates)
    assert all(rate > 0 for rate in rates.values())
    assert any(t["target"].startswith("small: prefetch.ray, other node MB/s") for t in data["targets"])
