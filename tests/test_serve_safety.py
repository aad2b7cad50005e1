"""The serving paths that must hold when things go wrong, each on the real component: an admission ends on
every path, a failed request batch answers its requests at once, a port whose last connections sit in
TIME_WAIT can be served again, and replicas get a GPU whenever the backend can use one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from audioldm_trt.engine.cli import UsageError
from audioldm_trt.serve.cli import _check_port_free
from audioldm_trt.serve.ingress import Admission, Refusal
from audioldm_trt.serve.loop import Failed
from audioldm_trt.serve.metrics import IngressMetrics
from audioldm_trt.serve.replica import Ticket
from audioldm_trt.serve.settings import ServeSettings, replica_cpus, replica_gpus


def _ingress() -> Any:
    return SimpleNamespace(held=0, metrics=IngressMetrics())


def _answered(ingress: Any, status: int) -> float:
    return ingress.metrics.registry.get_sample_value("audioldm_requests_total", {"status": str(status)}) or 0.0


@pytest.mark.parametrize(
    ("raised", "status"),
    [(None, 200), (Refusal(504, "late"), 504), (asyncio.CancelledError(), 499), (KeyError("timings"), 500)],
    ids=["answered", "refused", "cancelled", "unexpected"],
)
def test_an_admission_ends_on_every_path(raised: BaseException | None, status: int) -> None:
    ingress = _ingress()
    expectation = pytest.raises(type(raised)) if raised is not None else contextlib.nullcontext()
    with expectation, Admission(ingress) as admission:
        assert ingress.held == 1
        if raised is not None:
            raise raised
    assert ingress.held == 0 and _answered(ingress, status) == 1
    admission.end(200)  # once only
    assert ingress.held == 0 and _answered(ingress, 200) == (status == 200)


def test_a_handed_off_admission_is_ended_by_its_stream() -> None:
    ingress = _ingress()
    with Admission(ingress) as admission:
        admission.hand_off()
    assert ingress.held == 1
    admission.end(499)
    assert ingress.held == 0 and _answered(ingress, 499) == 1


def test_a_failed_request_batch_answers_its_requests_at_once() -> None:
    async def scenario() -> list[Any]:
        request = SimpleNamespace(prompts=("a",))
        ticket = Ticket(request)  # type: ignore[arg-type]

        async def failing_batch() -> None:
            raise RuntimeError("the batcher broke")

        ticket.batch = asyncio.ensure_future(failing_batch())
        ticket.batch.add_done_callback(ticket.batch_ended)
        first = await asyncio.wait_for(ticket.events.get(), timeout=5)
        ticket._deliver(Failed(500, "a second final event"))  # ignored: one final event per request
        await asyncio.sleep(0)
        return [first, ticket.events.qsize()]

    first, left = asyncio.run(scenario())
    assert first == Failed(500, "the request batch failed: the batcher broke") and left == 0


def test_a_port_whose_connections_sit_in_time_wait_can_be_served_again() -> None:
    """The server side closes first, as a stopped server does: its end of the connection is in TIME_WAIT."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
    client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # TIME_WAIT is there: a plain bind fails
        plain.bind(("127.0.0.1", port))
    _check_port_free("127.0.0.1", port)
    with socket.socket() as holder:  # a server listening there: refused
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(UsageError, match="cannot listen there"):
            _check_port_free("127.0.0.1", port)


@pytest.mark.parametrize(
    ("backend", "replicas", "cluster_gpus", "given", "expected"),
    [
        ("auto", 1, 1.0, None, 1.0),  # the default backend takes the GPU it can use
        ("auto", 4, 2.0, None, 0.5),  # shared when there are fewer GPUs than replicas
        ("auto", 2, 0.0, None, 0.0),  # a CPU cluster: none
        ("onnxruntime-cuda", 1, 8.0, None, 1.0),
        ("tensorrt", 3, 1.0, None, 1 / 3),
        ("onnxruntime-cpu", 1, 4.0, None, 0.0),  # a CPU backend never holds a GPU
        ("openvino", 1, 4.0, None, 0.0),
        ("auto", 1, 4.0, 0.25, 0.25),  # a config file's replica_gpus wins
    ],
)
def test_gpu_placement(backend: str, replicas: int, cluster_gpus: float, given: float | None, expected: float) -> None:
    settings = ServeSettings(engine="e", backend=backend, replicas=replicas, replica_gpus=given)
    assert replica_gpus(settings, cluster_gpus) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("replicas", "max_replicas", "cluster_cpus", "node_cpus", "given", "expected"),
    [
        (1, None, 2.0, 2.0, None, 2.0),  # one replica on a 2-core machine: both cores, as before replicas shared
        (2, None, 2.0, 2.0, None, 1.0),
        (1, 4, 16.0, 16.0, None, 4.0),  # room for the most replicas autoscaling may start
        (2, None, 64.0, 8.0, None, 8.0),  # a replica's threads run on one node
        (3, None, 2.0, 2.0, None, 1.0),  # at least one
        (1, None, 16.0, 16.0, 0.5, 0.5),  # a config file's replica_cpus wins
    ],
)
def test_cpu_placement(
    replicas: int, max_replicas: int | None, cluster_cpus: float, node_cpus: float, given: float | None, expected: float
) -> None:
    settings = ServeSettings(engine="e", replicas=replicas, max_replicas=max_replicas, replica_cpus=given)
    assert replica_cpus(settings, cluster_cpus, node_cpus) == expected


def test_max_replicas_below_replicas_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"max_replicas \(1\) is below replicas \(2\)"):
        ServeSettings(engine="e", replicas=2, max_replicas=1)


def test_a_gpu_backend_on_a_cluster_without_gpus_is_refused() -> None:
    with pytest.raises(ValueError, match="--backend tensorrt needs a GPU and the Ray cluster has none"):
        replica_gpus(ServeSettings(engine="e", backend="tensorrt"), 0.0)


def test_a_policy_with_a_batching_mode_that_ignores_it_is_refused() -> None:
    with pytest.raises(ValidationError, match="fill applies to step batching only; batching none has its own"):
        ServeSettings(engine="e", batching="none", policy="fill")
    assert ServeSettings(engine="e", batching="request").policy == "auto"
