"""Framework adapters in real training loops: torch here, JAX and Keras in their own processes.

JAX and Keras run in subprocesses: once JAX is imported a process's pools default to
the forkserver start method, which would change every later test of this session.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from prefetch import Pool, Streamer

from . import streams
from .volume_helpers import make_volume

ROOT = Path(__file__).resolve().parents[1]
W_TRUE = np.array([2.0, -3.0, 0.5, 1.0], np.float32)


def regression(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=4).astype(np.float32)
        yield x, np.float32(x @ W_TRUE + 0.01 * rng.normal())


def run_python(code: str, tmp_path: Path, timeout: float = 300, top: str = "") -> str:
    """Run `code` as a script's main block, `top` at module level (functions the workers import).

    Under forkserver the workers import the script, as multiprocessing does: the
    training code must sit under `if __name__ == "__main__":`.
    """
    script = tmp_path / "script.py"
    body = textwrap.indent(textwrap.dedent(code), "    ")
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{textwrap.dedent(top)}\n"
                      f"if __name__ == '__main__':\n{body}")
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# --- torch ---------------------------------------------------------------------------------------------------

def test_torch_linear_regression_loss_falls_twenty_fold():
    torch = pytest.importorskip("torch")
    import prefetch.torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    with prefetch.torch.Loader(Streamer(regression, 20_000, 1), batch_size=64, workers=2, seed=3) as loader:
        for x, y in loader:
            assert isinstance(x, torch.Tensor) and x.shape[1:] == (4,) and y.dtype == torch.float32
            loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.mean(losses[-20:]) * 20 < np.mean(losses[:20])


def test_torch_cpu_tensors_share_the_slots_and_dicts_stay_dicts():
    pytest.importorskip("torch")
    import prefetch.torch

    with Pool(Streamer(streams.numbered, 0, 64), batch_size=16, workers=1) as pool:
        loader = prefetch.torch.Loader(pool)
        batch = next(iter(loader))
        assert set(batch) == {"x", "y", "tag"} and batch["y"].tolist() == list(range(16))
        segment = np.frombuffer(pool._res.segments[0].mapping, np.uint8)
        start = segment.ctypes.data
        assert start <= batch["x"].data_ptr() < start + segment.nbytes, "the tensor is a copy"
        del segment, batch


def test_torch_loader_resumed_mid_epoch_gives_the_uninterrupted_batches():
    pytest.importorskip("torch")
    import prefetch.torch

    def loader():
        return prefetch.torch.Loader(Streamer(streams.numbered, 0, 400), batch_size=8, workers=2, seed=5)

    with loader() as reference:
        expected = [b["y"].tolist() for b in reference]
    with loader() as first:
        it = iter(first)
        got = [next(it)["y"].tolist() for _ in range(17)]
        state = first.state_dict()
    with loader() as resumed:
        resumed.load_state_dict(state)
        got += [b["y"].tolist() for b in resumed]
    assert got == expected


def test_torch_loader_over_volume_phases(tmp_path):
    torch = pytest.importorskip("torch")
    import prefetch.torch

    make_volume(tmp_path, 40)[0].close()

    def first_byte(names, metadatas):
        return np.frombuffer(Path(names[0]).read_bytes()[:1], np.uint8), np.int64(metadatas[0]["n"])

    gen = prefetch.bind_data_generator(str(tmp_path / "vol"), "@split:0.5:0.5", first_byte, batch_size=4,
                                       workers=1, drop_last=False)
    train, test, _ = gen.flow()
    for phase in (train, test):
        loader = prefetch.torch.Loader(phase)
        assert len(loader) == len(phase)
        seen = []
        for x, n in loader:
            assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8
            seen += n.tolist()
        valid = sorted(int(p.id[1:]) for p in phase.points)
        assert sorted(seen)[-len(valid):] == valid  # the padded rows of the last batch are zeros
    gen.close()


@pytest.mark.gpu
def test_torch_cuda_batches_match_the_host_batches_and_resume_exactly():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import prefetch.torch

    def loader(**kw):
        return prefetch.torch.Loader(Streamer(streams.numbered, 0, 4000), batch_size=32, workers=2, seed=7,
                                     start_method="forkserver", **kw)

    with loader() as cpu:
        expected = [b["y"].tolist() for b in cpu]
    with loader(device="cuda") as gpu:
        it = iter(gpu)
        got = []
        for _ in range(40):
            batch = next(it)
            assert batch["x"].is_cuda
            got.append(batch["y"].tolist())
        state = gpu.state_dict()
        assert gpu.batches.pool.stats()["slots"]["held"] <= 3
    with loader(device="cuda") as resumed:
        resumed.load_state_dict(state)
        got += [b["y"].tolist() for b in resumed]
    assert got == expected


# --- JAX and Keras, each in a process of its own ------------------------------------------------------------

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs jax")
"""Checked without importing JAX here: that would make every later pool of the session use forkserver."""

@needs_jax
def test_jax_jitted_gradient_steps_converge(tmp_path):
    out = run_python("""
        import numpy as np, jax, jax.numpy as jnp, prefetch, prefetch.jax
        from prefetch import Streamer
        from tests.test_adapters import regression

        @jax.jit
        def step(w, x, y):
            loss, grad = jax.value_and_grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
            return w - 0.05 * grad, loss

        w = jnp.zeros(4)
        loader = prefetch.jax.Loader(Streamer(regression, 20_000, 2), batch_size=64, workers=2, seed=1)
        losses = []
        for x, y in loader:
            assert isinstance(x, jax.Array)
            w, loss = step(w, x, y)
            losses.append(float(loss))
        loader.close()
        print(prefetch.Pool.__module__, losses[0], losses[-1], np.abs(np.asarray(w) - [2.0, -3.0, 0.5, 1.0]).max())
    """, tmp_path)
    _, first, last, error = out.split()
    assert float(last) * 20 < float(first) and float(error) < 0.05


@pytest.mark.skipif(not (importlib.util.find_spec("keras") and importlib.util.find_spec("jax")),
                    reason="needs keras and jax")
def test_keras_fit_with_validation_over_volume_phases(tmp_path):
    out = run_python(f"""
        import os
        os.environ.setdefault("KERAS_BACKEND", "jax")
        import numpy as np, keras, prefetch, prefetch.keras
        from pathlib import Path

        vol = prefetch.Volume.init({str(tmp_path / "vol")!r})
        rng = np.random.default_rng(0)
        with vol.transaction():
            for i in range(600):
                x = rng.normal(size=8).astype(np.float32)
                path = Path({str(tmp_path)!r}) / f"{{i}}.npy"
                np.save(path, x)
                vol.add({{"x.npy": path}}, {{"y": float(x.sum() > 0)}}, id=f"p{{i:04d}}")
        vol.commit("points")

        gen = prefetch.bind_data_generator(vol, "@split:0.8:0.2", load, batch_size=32, workers=2)
        train, validation, _ = gen.flow()
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy", metrics=["accuracy"])
        history = model.fit(prefetch.keras.Loader(train), validation_data=prefetch.keras.Loader(validation),
                            epochs=3, verbose=0)
        gen.close()
        from tests import streams
        try:
            model.fit(prefetch.keras.Loader(prefetch.Streamer(streams.pairs, 100), batch_size=10, workers=1))
        except prefetch.ArgumentError as exc:
            assert "steps_per_epoch" in str(exc)
        else:
            raise AssertionError("a stream of unknown length was accepted by fit")
        print(keras.backend.backend(), len(history.history["val_loss"]), history.history["loss"][0],
              history.history["loss"][-1], history.history["val_accuracy"][-1])
    """, tmp_path, top="""
        import numpy as np

        def load(names, metadatas):
            return np.load(names[0]), np.float32(metadatas[0]["y"])
    """)
    backend, epochs, first, last, accuracy = out.split()
    assert backend == "jax" and int(epochs) == 3
    assert float(last) < float(first) and float(accuracy) > 0.8


@needs_jax
def test_pools_default_to_forkserver_once_jax_is_imported_and_shardings_place_batches(tmp_path):
    out = run_python("""
        import prefetch
        from prefetch._pool import default_start_method
        before = default_start_method()
        import jax
        import prefetch.jax
        from tests import streams
        with prefetch.Pool(prefetch.Streamer(streams.numbered, 0, 16), batch_size=8, workers=1) as pool:
            print(before, pool.options.start_method, sum(b.size for b in pool))
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        loader = prefetch.jax.Loader(prefetch.Streamer(streams.numbered, 0, 16), batch_size=8, workers=1,
                                     sharding=sharding)
        batches = list(loader)
        loader.close()
        ys = [int(y) for b in batches for y in b["y"]]
        print(all(b["y"].sharding == sharding for b in batches), ys == list(range(16)))
    """, tmp_path)
    assert out.split() == ["fork", "forkserver", "16", "True", "True"]
