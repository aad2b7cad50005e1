"""The Ray Serve application: an HTTP ingress (``ingress.py``) in front of N engine replicas (``replica.py``).

``build_app`` is the entry point of a Ray Serve config file and of ``audioldm-trt serve``.
"""

from typing import Any, cast

import ray

from .ingress import Ingress
from .replica import EngineReplica
from .settings import ServeSettings, replica_cpus, replica_gpus

#: Calls a replica takes beyond the requests it holds: the ingress's status looks (readiness, metrics).
STATUS_CALL_SLOTS = 4
#: The longest interval between Ray's health checks of an engine replica (Ray's default).
HEALTH_CHECK_PERIOD_SECONDS = 10.0
#: Seconds beyond the request timeout that Ray waits for a stopping replica's requests (redeploys, scale-down).
SHUTDOWN_MARGIN_SECONDS = 10.0
#: Seconds requests must wait beyond the target before the autoscaler adds a replica (Ray's default is 30): a
#: replica takes about as long to load and warm up.
UPSCALE_DELAY_SECONDS = 10.0


def build_app(args: ServeSettings) -> Any:
    """The application for ``serve.run`` and for a Ray Serve config file (``import_path:
    audioldm_trt.serve.app:build_app``, ``args:`` the fields of ``ServeSettings``)."""
    settings = ServeSettings.model_validate(args)
    cluster, node_cpus = _cluster_resources()
    actor = {
        "num_cpus": replica_cpus(settings, cluster.get("CPU", 1.0), node_cpus),
        "num_gpus": replica_gpus(settings, cluster.get("GPU", 0.0)),
    }
    if settings.max_replicas is None:
        scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    else:
        autoscaling = {
            "min_replicas": settings.replicas,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.max_batch,
            "upscale_delay_s": UPSCALE_DELAY_SECONDS,
        }
        scaling = {"autoscaling_config": autoscaling}
    replicas = (
        cast(Any, EngineReplica)
        .options(
            **scaling,
            # The ingress admits the requests; the slots beyond them are for its status calls, which a full
            # replica would otherwise answer only once a request left (a busy server reported not ready).
            max_ongoing_requests=settings.replica_capacity + STATUS_CALL_SLOTS,
            ray_actor_options=actor,
            # A hung engine call is noticed at most a period after --stall-timeout, and the replica replaced two
            # periods later (Ray replaces a replica after three failed checks in a row).
            health_check_period_s=min(HEALTH_CHECK_PERIOD_SECONDS, settings.stall_timeout),
            graceful_shutdown_timeout_s=settings.request_timeout + SHUTDOWN_MARGIN_SECONDS,
            graceful_shutdown_wait_loop_s=0.5,
        )
        .bind(settings)
    )
    total = settings.most_replicas * settings.replica_capacity
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


def _cluster_resources() -> tuple[dict[str, float], float]:
    """The Ray cluster's resources in all, and the most CPUs of one node (none known without Ray)."""
    if not ray.is_initialized():
        return {}, 1.0
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return dict(ray.cluster_resources()), max((node.get("CPU", 0.0) for node in nodes), default=1.0)
