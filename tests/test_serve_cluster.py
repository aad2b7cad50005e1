"""`audioldm-trt serve --ray-address`: deployed onto a Ray cluster that this module starts, with two engine
replicas, Ray Serve's request-level batching, an API key and a short request timeout; and the config file
example that `serve deploy` takes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from audioldm_trt.serve.app import build_app

from conftest import ModelUnderTest
from test_serve import MIXED, Answer, Server, assert_same_audio, reference

KEY = "s3cret-test-key"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def expected(tiny: ModelUnderTest) -> list[np.ndarray]:
    return [reference(tiny, body, extra) for body, extra in MIXED]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs: its address."""
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING"
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def server(
    cluster: str, tiny: ModelUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, Answer]]]:
    """The server, and what it answered while its engine replicas could not start (their CPUs taken)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    directory = tmp_path_factory.mktemp("serve-cluster")
    (directory / "api-key").write_text(KEY + "\n")
    # The cluster's 2 CPUs reserved: the engine replicas (1 CPU each) wait for them, as for a node to join.
    reserved = placement_group([{"CPU": 2}])
    ray.get(reserved.ready())
    server = Server(
        directory / "server.log",
        *("--engine", str(tiny.export), "--ray-address", cluster, "--replicas", "2", "--batching", "request"),
        *("--api-key-file", str(directory / "api-key"), "--request-timeout", "10", "--max-batch", "4"),
        *("--max-steps", "1000"),
    )
    try:
        early = wait_for_ingress(server)
        early["generate"] = server.post({"prompt": "too early"}, AUTHORIZED)
        early["readyz"] = server.get("/readyz")
        remove_placement_group(reserved)
        server.wait_serving()
        yield server, early
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()[-3000:]


def wait_for_ingress(server: Server) -> dict[str, Answer]:
    for _ in range(600):
        try:
            healthz = server.get("/healthz")
        except OSError:  # not listening yet
            healthz = None
        if healthz is not None and healthz.status == 200:
            return {"healthz": healthz}
        assert server.process.poll() is None, server.output()[-3000:]
        time.sleep(0.5)
    pytest.fail(f"the ingress did not come up:\n{server.output()[-3000:]}")


def test_503_until_an_engine_replica_is_loaded(server: tuple[Server, dict[str, Answer]]) -> None:
    _, early = server
    assert early["healthz"].json() == {"status": "alive"}
    for name in ("generate", "readyz"):
        assert early[name].status == 503
        assert "no engine replica is loaded and warmed yet" in early[name].json()["error"]


def test_401_without_the_right_key_which_is_never_logged(server: tuple[Server, dict[str, Answer]]) -> None:
    running, _ = server
    body = {"prompt": "a dog", "duration": 0.5, "steps": 2, "seed": 0}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}):
        answer = running.post(body, headers)
        assert answer.status == 401, headers
        assert answer.json() == {"error": "missing or wrong Authorization: Bearer key"}
        assert answer.headers["www-authenticate"] == "Bearer"
    assert running.post(body, AUTHORIZED).status == 200
    assert running.get("/healthz").status == 200 and running.get("/metrics").status == 200  # open to probes
    assert KEY not in running.output()
    assert running.metrics()['audioldm_requests_total{status="401"}'] == 4


def test_request_level_batching_on_two_replicas_gives_each_request_its_own_audio(
    server: tuple[Server, dict[str, Answer]], expected: list[np.ndarray]
) -> None:
    running, _ = server
    with ThreadPoolExecutor(len(MIXED)) as pool:
        answers = list(pool.map(lambda pair: running.post(pair[0], AUTHORIZED), MIXED))
    for answer, audio in zip(answers, expected, strict=True):
        assert answer.status == 200, answer.body
        for served, waveform in zip(answer.json()["audio"], audio, strict=True):
            assert_same_audio(base64.b64decode(served), waveform)
    assert running.get("/readyz").json() == {"status": "ready", "replicas": 2}
    text = running.get("/metrics").body.decode()
    replicas = {line.split('replica="')[1].split('"')[0] for line in text.splitlines() if 'replica="' in line}
    assert len(replicas) == 2


def test_504_after_the_request_timeout_and_the_request_leaves(server: tuple[Server, dict[str, Answer]]) -> None:
    running, _ = server
    # Several times the timeout's work on the fastest of this project's machines (200 steps of 5 s took 8 s there).
    answer = running.post({"prompt": "a very long one", "duration": 5, "steps": 900, "waveforms": 2}, AUTHORIZED)
    assert answer.status == 504
    assert answer.json() == {"error": "the request took longer than the server's request timeout"}
    assert running.wait_metric("audioldm_replica_requests", lambda held: held == 0) == 0
    assert running.metrics()['audioldm_requests_total{status="504"}'] == 1


def test_the_config_file_example_is_a_ray_serve_config_of_this_application(tiny: ModelUnderTest) -> None:
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parent.parent / "serve" / "config.example.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (application,) = config.applications
    assert application.import_path == "audioldm_trt.serve.app:build_app"
    module, _, name = application.import_path.partition(":")
    assert (module, name) == (build_app.__module__, build_app.__name__)
    app = build_app({**application.args, "engine": str(tiny.export)})
    assert type(app).__name__ == "Application"
    with pytest.raises(ValueError, match="batching"):
        build_app({**application.args, "batching": "sometimes"})
