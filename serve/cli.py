"""``audioldm-trt serve``: the HTTP API on Ray Serve, on a local Ray instance or on a Ray cluster.

Registered through the ``audioldm_trt.commands`` entry point; nothing here imports Ray, FastAPI or pydantic
until the command runs, so that ``audioldm-trt`` without the ``serve`` extra says what to install.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from audioldm_trt.engine.backends import BACKENDS
from audioldm_trt.engine.cli import (
    UsageError,
    import_extra,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from audioldm_trt.engine.decoding import chunk_frames
from audioldm_trt.engine.manifest import Manifest

from .policy import POLICIES

logger = logging.getLogger("audioldm_trt.serve")

#: The Ray Serve application's name (``serve status``, ``serve delete``).
APP_NAME = "audioldm-trt"
#: Ray's shared-memory object store for a local instance: results are a few hundred kB each.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    serve = commands.add_parser(
        "serve", parents=[common], help="serve the HTTP API on Ray Serve (needs the serve extra)"
    )
    serve.add_argument(
        "--engine", metavar="DIR", required=True, type=Path, help="directory written by `audioldm-trt export`"
    )
    serve.add_argument(
        "--host",
        metavar="HOST",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    serve.add_argument("--port", metavar="N", type=positive_int, default=8000, help="HTTP port (default 8000)")
    serve.add_argument(
        "--replicas", metavar="N", type=positive_int, default=1, help="engine replicas, each with its own engine"
    )
    serve.add_argument(
        "--max-replicas",
        metavar="N",
        type=positive_int,
        help="autoscale from --replicas up to N replicas while requests wait (Ray Serve's autoscaling)",
    )
    serve.add_argument(
        "--max-batch",
        metavar="N",
        type=positive_int,
        default=8,
        help="requests per UNet call and waveforms per request (default 8)",
    )
    serve.add_argument(
        "--max-queue",
        metavar="N",
        type=non_negative_int,
        default=32,
        help="requests a replica holds beyond --max-batch; past that, 429 (default 32)",
    )
    serve.add_argument(
        "--request-timeout",
        metavar="S",
        type=positive_float,
        default=300.0,
        help="seconds before a request gets 504, and that a stopping server waits for the requests it holds (300)",
    )
    serve.add_argument(
        "--stall-timeout",
        metavar="S",
        type=positive_float,
        default=300.0,
        help="seconds an engine call may last before its replica counts as wedged and is restarted (default 300)",
    )
    serve.add_argument(
        "--max-duration", metavar="S", type=positive_float, help="longest audio in seconds (default: the engines')"
    )
    serve.add_argument(
        "--max-steps", metavar="N", type=positive_int, default=200, help="most denoising steps (default 200)"
    )
    serve.add_argument(
        "--api-key-file", metavar="F", type=Path, help="file holding the key: clients send Authorization: Bearer KEY"
    )
    serve.add_argument(
        "--ray-address", metavar="ADDR", help="deploy onto this Ray cluster (or set RAY_ADDRESS) instead of a local one"
    )
    serve.add_argument(
        "--backend", metavar="B", choices=BACKENDS, default="auto", help="what runs the graphs (default auto)"
    )
    serve.add_argument(
        "--threads", metavar="N", type=positive_int, help="ONNX Runtime threads per call in each replica"
    )
    serve.add_argument(
        "--batching",
        choices=("step", "request", "none"),
        default="step",
        help="step: requests join and leave the batch at every UNet call (default); request: Ray Serve's"
        " @serve.batch over whole requests; none: one request at a time",
    )
    serve.add_argument(
        "--policy",
        choices=("auto", *POLICIES),
        default="auto",
        help="which requests share an engine call with step batching (default auto: fill on a GPU, deadline on CPU)",
    )
    serve.add_argument(
        "--vocoder-chunk",
        metavar="S",
        type=non_negative_float,
        default=2.0,
        help="seconds of audio per vocoder call: other requests run between a clip's calls, and streams get audio"
        " as it is made (default 2; 0: whole clips in one call)",
    )
    serve.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the engine files")
    serve.add_argument(
        "--no-playground", action="store_true", help="no playground page at GET / (then GET / answers 404)"
    )
    serve.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Deploy, print where it listens, serve until SIGINT or SIGTERM, drain, then take the application down.

    Signals are handled from the start: while the replicas load, SIGINT or SIGTERM gives up the start at once;
    once serving, the first one drains (no new admissions, the requests held answered, up to the request
    timeout) and a second one stops at once."""
    serving, stop = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if not serving.is_set() or stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    def handle_signals() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)

    handle_signals()
    settings = _settings(args)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = import_extra("ray", "serve")
    serve = import_extra("ray.serve", "serve")
    build_app = import_extra("audioldm_trt.serve.app", "serve").build_app

    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    for name in ("ray", "ray.serve"):  # Ray Serve's driver logger has a level of its own
        logging.getLogger(name).setLevel(level)
    if not address:
        _check_port_free(args.host, args.port)
    try:
        if address:
            ray.init(address=address, logging_level=level)
        else:
            _start_local_ray(ray, max(os.cpu_count() or 1, settings.most_replicas), level)
        handle_signals()  # again: Ray's core worker puts its own SIGTERM handler (log, then exit) in place
        try:
            application = build_app(settings)  # a GPU backend on a cluster without a GPU fails here
        except ValueError as error:
            raise UsageError(str(error)) from None
        serve.start(http_options={"host": args.host, "port": args.port}, logging_config={"log_level": level})
        print(f"loading {args.engine} on {settings.replicas} replica(s) ...", flush=True)
        ingress = serve.run(application, name=APP_NAME, route_prefix="/", logging_config={"log_level": level})
        serving.set()
        pages = "playground at /, API at /docs" if settings.playground else "API at /docs"
        print(f"serving on http://{args.host}:{args.port} ({pages}); Ctrl-C stops", flush=True)
        stop.wait()
        _drain(ingress, settings.request_timeout)
    except KeyboardInterrupt:
        print("stopping now", flush=True)
    finally:
        if ray.is_initialized():
            if address:
                serve.delete(APP_NAME)
            else:
                serve.shutdown()
            ray.shutdown()
    print("stopped", flush=True)


def _drain(ingress: Any, timeout: float) -> None:
    """Stop admitting and wait, up to ``timeout`` seconds, for the requests held to be answered."""
    deadline = time.monotonic() + timeout
    held = ingress.drain.remote().result()
    print(f"stopping: no new requests; {held} held request(s) to finish", flush=True)
    while held and time.monotonic() < deadline:
        time.sleep(0.2)
        held = ingress.held_requests.remote().result()
    if held:
        print(f"{held} request(s) still held after {timeout:g} s: stopping them", flush=True)


def _start_local_ray(ray: Any, cpus: int, level: int) -> None:
    """A new local Ray instance, even where ``ray start`` left one running. Ray gives its node 30 s to register;
    on a machine busy enough to miss that, it tries once more."""
    for attempt in (1, 2):
        try:
            ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                logging_level=level,
            )
            return
        except Exception as error:
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(error):
                raise
            logger.warning("Ray did not start in time (%s); trying again", error)


def _settings(args: argparse.Namespace) -> Any:
    """The checked settings; a bad value is a usage error before Ray starts."""
    from pydantic import ValidationError

    from .api import validation_message
    from .ingress import read_api_key
    from .settings import ServeSettings

    manifest = Manifest.load(args.engine)  # a missing or incomplete export fails now, not in every replica
    vocoder_chunk = args.vocoder_chunk or None
    try:
        chunk_frames(manifest.model, vocoder_chunk)
    except ValueError as error:
        raise UsageError(f"--vocoder-chunk: {error}") from None
    if args.api_key_file is not None:
        try:
            read_api_key(str(args.api_key_file))
        except ValueError as error:
            raise UsageError(f"--api-key-file: {error}") from None
    try:
        return ServeSettings(
            engine=str(args.engine.resolve()),
            backend=args.backend,
            threads=args.threads,
            verify=not args.no_verify,
            replicas=args.replicas,
            max_replicas=args.max_replicas,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            request_timeout=args.request_timeout,
            stall_timeout=args.stall_timeout,
            max_duration=args.max_duration,
            max_steps=args.max_steps,
            vocoder_chunk=vocoder_chunk,
            api_key_file=str(args.api_key_file.resolve()) if args.api_key_file else None,
            batching=args.batching,
            policy=args.policy,
            playground=not args.no_playground,
        )
    except ValidationError as error:
        raise UsageError(validation_message(error)) from None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn listens: the connections of a server stopped a moment ago (TIME_WAIT) do not block it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
