"""Remote volumes against real servers: kept-alive HTTP, retries, stalls, and S3 through moto's server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from prefetch import FetchError, Volume, bind_data_generator
from prefetch.volumes import remote

from ..volume_helpers import Faults, Server, make_volume


def first_byte(names, metadatas):
    return {"x": np.frombuffer(Path(names[0]).read_bytes()[:1], np.uint8), "n": metadatas[0]["n"]}


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


def read_all(vol: Volume) -> dict[str, bytes]:
    return {p.id: vol.file(p, name).read_bytes() for p in vol.query("") for name in p.files}


def test_files_share_one_kept_alive_connection(tmp_path):
    make_volume(tmp_path, 40)[0].close()
    with Server(tmp_path / "vol", keep_alive=True) as server:
        vol = Volume.open(server.url, cache_dir=tmp_path / "c")
        files = read_all(vol)
        vol.close()
        connections = server.httpd.connections
    assert len(files) == 40 and files["p0007"] == bytes([7]) * 8
    assert connections <= 2, f"{connections} connections for 41 files"


def test_failed_and_dropped_transfers_are_retried_and_every_sample_arrives(tmp_path, fast_retries):
    make_volume(tmp_path, 40)[0].close()
    with Server(tmp_path / "vol", keep_alive=True) as good:
        vol = Volume.open(good.url, cache_dir=tmp_path / "index-cache")
        expected = read_all(vol)
        vol.close()
    faults = Faults(["error", "drop"])
    with Server(tmp_path / "vol", keep_alive=True, faults=faults) as server:
        vol = Volume.open(server.url, cache_dir=tmp_path / "c")
        assert read_all(vol) == expected
        vol.close()
        gen = bind_data_generator(server.url, "", first_byte, batch_size=4, workers=2, shuffle=False,
                                  cache_dir=tmp_path / "c2")
        got = sorted(int(n) for batch in gen.flow().train for n in batch["n"])
        gen.close()
    assert got == list(range(40))
    assert all(count >= 3 for path, count in faults.seen.items() if path.startswith("/objects/"))


def test_a_server_that_keeps_failing_gives_a_named_error_after_the_last_retry(tmp_path, fast_retries):
    make_volume(tmp_path, 3)[0].close()
    faults = Faults([], always="error")
    with Server(tmp_path / "vol", faults=faults) as server:
        vol = Volume.open(server.url, cache_dir=tmp_path / "c")
        point = vol.query("").points[0]
        with pytest.raises(FetchError, match=r"503.*after 5 attempts"):
            vol.file(point, "f0.bin")
        vol.close()
    assert faults.seen[f"/objects/{point.files['f0.bin']['sha256'][:2]}/{point.files['f0.bin']['sha256'][2:]}"] == 5


def test_a_trickling_server_is_given_up_on(tmp_path, fast_retries, monkeypatch):
    monkeypatch.setattr(remote, "STALL_S", 0.6)
    monkeypatch.setattr(remote, "RETRIES", 1)
    make_volume(tmp_path, 3)[0].close()
    faults = Faults([], always="trickle")
    with Server(tmp_path / "vol", faults=faults) as server:
        vol = Volume.open(server.url, cache_dir=tmp_path / "c")
        point = vol.query("").points[0]
        start = time.monotonic()
        with pytest.raises(FetchError, match="stalled"):
            vol.file(point, "f0.bin")
        assert time.monotonic() - start < 10
        vol.close()


# --- S3, through moto's server on 127.0.0.1 ------------------------------------------------------------------

@pytest.fixture
def s3(monkeypatch):
    pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    remote._s3_client.clear()
    yield remote.s3_client()
    remote._s3_client.clear()
    server.stop()


def upload(client, folder: Path, bucket: str, prefix: str) -> None:
    client.create_bucket(Bucket=bucket)
    for path in folder.rglob("*"):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}", Body=path.read_bytes())


def test_s3_volume_streams_through_a_pool_with_one_client_per_process(tmp_path, s3):
    _, version = make_volume(tmp_path, 30)
    upload(s3, tmp_path / "vol", "volumes", "mine")
    url = "s3://volumes/mine"
    vol = Volume.open(url, cache_dir=tmp_path / "c")
    assert len(vol.query(f"@version:{version} label:dog")) == 10
    assert read_all(vol)["p0003"] == bytes([3]) * 4
    vol.close()
    clients = set()
    threads = [threading.Thread(target=lambda: clients.add(id(remote.s3_client()))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clients == {id(s3)}
    gen = bind_data_generator(url, "", first_byte, batch_size=5, workers=2, cache_dir=tmp_path / "c2",
                              shuffle=False)
    got = sorted(int(n) for batch in gen.flow().train for n in batch["n"])
    gen.close()
    assert got == list(range(30))
    with pytest.raises(FetchError, match=r"NoSuchKey|Not Found|404"):
        list(remote.chunks("s3://volumes/mine/objects/none"))
