"""Ray Serve's autoscaling under load on a local instance: `audioldm-trt serve --replicas 1 --max-replicas 2`
starts one engine replica, a second starts while requests wait, and the ingress admits for the replicas that
are live."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from conftest import ModelUnderTest
from test_serve import Server

#: Requests of several seconds each on the tiny model, more than one replica takes at once.
LOAD = [{"prompt": f"a long one {i}", "duration": 5, "steps": 250, "seed": i} for i in range(6)]
#: Short requests sent once the second replica is up: Ray routes them to it, the first one being busy.
AFTER = [{"prompt": f"a short one {i}", "duration": 1, "steps": 4, "seed": i} for i in range(2)]


def test_a_second_replica_starts_under_load_and_serves(tiny: ModelUnderTest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = Server(
        tmp_path / "server.log",
        *("--engine", str(tiny.export), "--replicas", "1", "--max-replicas", "2"),
        *("--max-batch", "1", "--max-queue", "8", "--max-steps", "400", "--request-timeout", "600", "--no-playground"),
    )
    try:
        server.wait_serving()
        assert server.get("/readyz").json() == {"status": "ready", "replicas": 1}
        with ThreadPoolExecutor(len(LOAD) + len(AFTER)) as pool:
            loaded = [pool.submit(server.post, body) for body in LOAD]
            replicas, deadline = 1, time.monotonic() + 240
            while replicas < 2 and time.monotonic() < deadline:
                time.sleep(1)
                replicas = server.get("/readyz").json()["replicas"]
            assert replicas == 2, server.output()[-3000:]
            after = [pool.submit(server.post, body) for body in AFTER]
            answers = [future.result() for future in after + loaded]
        assert [answer.status for answer in answers] == [200] * len(answers)
        text = server.get("/metrics").body.decode()
        working = {
            line.split('replica="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("audioldm_unet_calls_total{") and not line.endswith(" 0.0")
        }
        assert len(working) == 2  # both replicas computed
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()[-3000:]
