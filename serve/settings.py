"""What ``audioldm-trt serve`` and a Ray Serve config file set: one model, checked once, shared by both paths."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
)

from audioldm_trt.engine.backends import BACKENDS

from .api import Limits
from .policy import POLICIES

BATCHING_MODES = ("step", "request", "none")


class ServeSettings(BaseModel):
    """The application's arguments (``build_app``'s ``args`` in a config file; the options of ``serve``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: str = Field(description="engine directory written by `audioldm-trt export` (on every replica's node)")
    backend: str = Field(default="auto", description=f"one of {', '.join(BACKENDS)}")
    threads: PositiveInt | None = Field(
        default=None, description="ONNX Runtime threads per graph call (default: all cores)"
    )
    verify: bool = Field(default=True, description="check the engine files' sha256 when a replica loads them")
    replicas: PositiveInt = Field(default=1, description="engine replicas (the least, with max_replicas)")
    max_replicas: PositiveInt | None = Field(
        default=None,
        description="autoscale up to this many replicas as requests wait (Ray Serve's autoscaling, aiming at"
        " max_batch requests per replica); a config file may give the deployment an autoscaling_config instead",
    )
    max_batch: PositiveInt = Field(default=8, description="requests (and waveforms per request) in one UNet call")
    max_queue: int = Field(default=32, ge=0, description="requests a replica holds beyond --max-batch; past that, 429")
    request_timeout: PositiveFloat = Field(default=300.0, description="seconds before a request is answered 504")
    stall_timeout: PositiveFloat = Field(
        default=300.0,
        description="seconds an engine call may last while requests wait before the replica counts as wedged",
    )
    max_duration: PositiveFloat | None = Field(
        default=None, description="longest audio in seconds (default: the engines')"
    )
    max_steps: PositiveInt = 200
    vocoder_chunk: PositiveFloat | None = Field(
        default=2.0,
        description="seconds of audio per vocoder call (other requests run between them; streams get audio as"
        " it is made); null: whole clips",
    )
    api_key_file: str | None = Field(
        default=None, description="file holding the key clients send as Authorization: Bearer"
    )
    batching: str = Field(default="step", description="step (step-level batching), request (whole requests) or none")
    policy: str = Field(default="auto", description=f"auto, {', '.join(POLICIES)}: which requests share a UNet call")
    playground: bool = Field(default=True, description="serve the playground page at GET / (else GET / is 404)")
    #: Ray resources of one engine replica; None: a share of the cluster's CPUs (``replica_cpus``), and a GPU where
    #: the backend can use one and the cluster has one (``replica_gpus``).
    replica_cpus: float | None = Field(default=None, ge=0)
    replica_gpus: float | None = Field(default=None, ge=0)

    @field_validator("backend", "batching", "policy")
    @classmethod
    def _one_of(cls, value: str, info: ValidationInfo) -> str:
        choices = {"backend": BACKENDS, "batching": BATCHING_MODES, "policy": ("auto", *POLICIES)}[str(info.field_name)]
        if value not in choices:
            raise ValueError(f"{info.field_name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    @field_validator("policy")
    @classmethod
    def _policy_needs_step_batching(cls, value: str, info: ValidationInfo) -> str:
        batching = info.data.get("batching", "step")
        if value != "auto" and batching != "step":
            raise ValueError(f"{value} applies to step batching only; batching {batching} has its own")
        return value

    @field_validator("max_replicas")
    @classmethod
    def _at_least_replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("replicas", 1)
        if value is not None and value < replicas:
            raise ValueError(f"max_replicas ({value}) is below replicas ({replicas})")
        return value

    @property
    def most_replicas(self) -> int:
        return self.max_replicas or self.replicas

    @property
    def limits(self) -> Limits:
        return Limits(max_steps=self.max_steps, max_duration=self.max_duration, max_waveforms=self.max_batch)

    @property
    def replica_capacity(self) -> int:
        """Requests one replica holds at once: in its loop (or request batch) and waiting to join."""
        return self.max_batch + self.max_queue


#: Backends that run only on a GPU, and the one that takes a GPU where there is one.
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda")
GPU_IF_PRESENT_BACKENDS = ("auto",)


def replica_cpus(settings: ServeSettings, cluster_cpus: float, node_cpus: float) -> float:
    """The CPUs (Ray's ``num_cpus``) of one engine replica, which set its ONNX Runtime threads: ``replica_cpus``
    where the settings give it; else an equal share of the cluster's for the most replicas there may be, within
    the largest node (a replica's threads run on one node), and at least 1."""
    if settings.replica_cpus is not None:
        return settings.replica_cpus
    return float(max(1, min(int(node_cpus), int(cluster_cpus) // settings.most_replicas)))


def replica_gpus(settings: ServeSettings, cluster_gpus: float) -> float:
    """The GPUs (Ray's ``num_gpus``) of one engine replica: ``replica_gpus`` where the settings give it; else a
    GPU each where the backend can use one and the cluster has GPUs (``auto`` included: without a GPU of its
    own, Ray would hide the GPU and the replica would run on the CPU), shared when there are fewer GPUs than
    replicas; else none. ValueError for a GPU-only backend on a cluster without a GPU."""
    if settings.replica_gpus is not None:
        return settings.replica_gpus
    if settings.backend in GPU_BACKENDS and cluster_gpus <= 0:
        raise ValueError(f"--backend {settings.backend} needs a GPU and the Ray cluster has none")
    if settings.backend not in (*GPU_BACKENDS, *GPU_IF_PRESENT_BACKENDS) or cluster_gpus <= 0:
        return 0.0
    return min(1.0, cluster_gpus / settings.most_replicas)
