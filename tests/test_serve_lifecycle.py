"""Stopping and starting `audioldm-trt serve` as operators do, on a real server (the command, its own Ray, real
HTTP, the tiny model): SIGTERM drains (no new admissions, /readyz 503, the request in flight answered 200),
the port serves again at once, an idle server stops within seconds; with faults planted
(tests/faults/sitecustomize.py): an unexpected error returns its admission slot, and a replica whose engine
hangs is given up on and replaced."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from audioldm_trt.serve.api import REPLICA_LOST_MESSAGE

from conftest import ModelUnderTest
from test_serve import READINESS_TTL_SECONDS, Server

#: Seconds a hung engine call lasts before the faulty server's replica counts as wedged.
STALL_SECONDS = 2
#: A request long enough to be in flight when the signal comes (hundreds of UNet calls of the tiny model).
LONG = {"prompt": "a long one", "duration": 1.0, "steps": 400, "seed": 1}


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_sigterm_drains_then_the_port_serves_again_and_an_idle_server_stops_quickly(
    tiny: ModelUnderTest, tmp_path: Path
) -> None:
    first = Server(tmp_path / "first.log", "--engine", str(tiny.export), "--threads", "1", "--max-steps", "1000")
    try:
        first.wait_serving()
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(first.post, LONG)
            _wait(lambda: first.metrics().get("audioldm_requests_in_flight", 0) == 1, 60, "the request never started")
            first.process.send_signal(signal.SIGTERM)
            _wait(lambda: first.get("/readyz").status == 503, 30, "/readyz never turned 503")
            refused = first.post({"prompt": "too late", "steps": 2})
            assert refused.status == 503 and {k.lower(): v for k, v in refused.headers.items()}["retry-after"] == "5"
            assert refused.json()["error"] == "the server is stopping; retry"
            answered = in_flight.result(timeout=300)
        assert answered.status == 200, answered.body[:300]
        first.process.wait(timeout=120)
        stopped = time.monotonic()
        assert first.process.returncode == 0, first.output()[-2000:]
        assert "1 held request(s) to finish" in first.output()
    finally:
        first.stop()

    second = Server(tmp_path / "second.log", "--engine", str(tiny.export), "--threads", "1", port=first.port)
    try:
        _wait(lambda: "loading" in second.output() or second.process.poll() is not None, 60, "no start")
        assert second.process.poll() is None and time.monotonic() - stopped < 60, second.output()[-2000:]
        second.wait_serving()
        assert second.post({"prompt": "again", "steps": 2, "duration": 0.5}).status == 200
        signalled = time.monotonic()
        second.process.send_signal(signal.SIGTERM)
        second.process.wait(timeout=60)
        assert time.monotonic() - signalled < 10 and second.process.returncode == 0, second.output()[-2000:]
    finally:
        second.stop()


@dataclass
class FaultyServer:
    """A server whose processes carry tests/faults/sitecustomize.py, and the file its hung call touches."""

    server: Server
    hung: Path


@pytest.fixture(scope="module")
def faulty(tiny: ModelUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyServer]:
    """A replica holds 2 requests; a hung engine call counts as wedged after STALL_SECONDS."""
    directory = tmp_path_factory.mktemp("faulty")
    hung = directory / "hung"
    paths = [str(Path(__file__).resolve().parent / "faults"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "FAULTS_MARKER": str(hung), "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    arguments = ["--engine", str(tiny.export), "--threads", "1", "--max-batch", "1", "--max-queue", "1"]
    server = Server(directory / "server.log", *arguments, "--stall-timeout", str(STALL_SECONDS), env=env)
    try:
        server.wait_serving()
        yield FaultyServer(server, hung)
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()[-2000:]


def test_an_unexpected_error_answers_500_and_returns_its_admission_slot(faulty: FaultyServer) -> None:
    """A bug in the ingress (its answer raises, for seed 13): 500, counted, and its slot is returned, so that a
    server that answered its capacity's worth of such requests still admits."""
    server = faulty.server
    for _ in range(2):  # the replica's capacity
        assert server.post({"prompt": "explode", "steps": 2, "duration": 0.5, "seed": 13}).status == 500
    metrics = server.metrics(fresh=True)
    assert metrics["audioldm_requests_in_flight"] == 0 and metrics['audioldm_requests_total{status="500"}'] == 2
    assert server.post({"prompt": "fine", "steps": 2, "duration": 0.5, "seed": 14}).status == 200


def test_a_wedged_engine_is_given_up_on_its_requests_answered_503_and_its_replica_replaced(
    faulty: FaultyServer,
) -> None:
    """An engine call that never returns (tests/faults/sitecustomize.py hangs the UNet call of the prompt
    "wedge", as a call on a hung GPU would): once it has lasted --stall-timeout the replica's health check fails
    and the requests it holds are answered 503 at once, Ray replaces the replica, and the new one serves."""
    server = faulty.server
    wedged = _replica_ids(server)
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(server.post, {"prompt": "wedge", "steps": 2, "duration": 0.5})
        _wait(faulty.hung.exists, 60, "the engine call never hung")
        hung = time.monotonic()
        behind = pool.submit(server.post, {"prompt": "behind it", "steps": 2, "duration": 0.5})
        answers = [stuck.result(timeout=120), behind.result(timeout=120)]
    # Given up on at the first health check past the stall (Ray checks every --stall-timeout here).
    assert time.monotonic() - hung < 2 * STALL_SECONDS + 10
    assert [answer.status for answer in answers] == [503, 503], [answer.body[:300] for answer in answers]
    assert {answer.json()["error"] for answer in answers} == {REPLICA_LOST_MESSAGE}
    after = {"prompt": "after it", "steps": 2, "duration": 0.5}
    _wait(lambda: server.post(after).status == 200, 180, "no replica served again")
    replaced = _replica_ids(server)
    assert len(wedged) == len(replaced) == 1 and not wedged & replaced
    assert f"replica {wedged.pop()}: an engine call has not returned" in server.output()


def _replica_ids(server: Server) -> set[str]:
    """The engine replicas /metrics shows now."""
    time.sleep(READINESS_TTL_SECONDS + 0.1)  # past the ingress's cached look
    return set(re.findall(r'replica="(\w+)"', server.get("/metrics").body.decode()))
