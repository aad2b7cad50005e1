"""Stopping and starting `audioldm-trt serve` as operators do, on a real server (the command, its own Ray, real
HTTP, the tiny model): SIGTERM drains (no new admissions, /readyz 503, the request in flight answered 200),
the port serves again at once, and an idle server stops within seconds."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import ModelUnderTest
from test_serve import Server

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
