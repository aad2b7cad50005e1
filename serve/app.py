"""The Ray Serve application: an HTTP ingress (``ingress.py``) in front of N engine replicas (``replica.py``).

``build_app`` is the entry point of a Ray Serve config file and of ``audioldm-trt serve``.
"""

from typing import Any, cast

import ray

from .ingress import Ingress
from .replica import EngineReplica
from .settings import ServeSettings, replica_gpus

#: Calls a replica takes beyond the requests it holds: the ingress's status looks (readiness, metrics).
STATUS_CALL_SLOTS = 4
#: Seconds beyond the request timeout that Ray waits for a stopping replica's requests (redeploys, scale-down).
SHUTDOWN_MARGIN_SECONDS = 10.0


def build_app(args: ServeSettings) -> Any:
    """The application for ``serve.run`` and for a Ray Serve config file (``import_path:
    audioldm_trt.serve.app:build_app``, ``args:`` the fields of ``ServeSettings``)."""
    settings = ServeSettings.model_validate(args)
    actor = {
        "num_cpus": 1.0 if settings.replica_cpus is None else settings.replica_cpus,
        "num_gpus": replica_gpus(settings, ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0),
    }
    replicas = (
        cast(Any, EngineReplica)
        .options(
            num_replicas=settings.replicas,
            # The ingress admits the requests; the slots beyond them are for its status calls, which a full
            # replica would otherwise answer only once a request left (a busy server reported not ready).
            max_ongoing_requests=settings.replica_capacity + STATUS_CALL_SLOTS,
            ray_actor_options=actor,
            health_check_period_s=10,
            graceful_shutdown_timeout_s=settings.request_timeout + SHUTDOWN_MARGIN_SECONDS,
            graceful_shutdown_wait_loop_s=0.5,
        )
        .bind(settings)
    )
    total = settings.replicas * settings.replica_capacity
    # The ingress answers refusals itself: it takes every request up to far past the capacity it admits.
    return (
        cast(Any, Ingress)
        .options(
            max_ongoing_requests=4 * total + 64,
            ray_actor_options={"num_cpus": 0},
            graceful_shutdown_timeout_s=settings.request_timeout + SHUTDOWN_MARGIN_SECONDS,
            graceful_shutdown_wait_loop_s=0.5,
        )
        .bind(replicas, settings)
    )
