"""Soak and replica-kill runs of ``audioldm-trt serve`` (not part of the test suite: they take minutes).

    python -m audioldm_trt.serve.soak --engine DIR [--minutes 5] [--clients 3] [--replicas 2]
        [--kill-replica-at S] [--output soak.json] [-- SERVE ARGUMENTS ...]

It starts the server on a free local port (traffic goes to 127.0.0.1 only), keeps ``--clients`` requests in
flight (closed loop; short requests of mixed lengths, steps and seeds) until the time is up, samples the RSS of
every process of the server (the command, Ray's processes, the ingress and the engine replicas) every few
seconds, and with ``--kill-replica-at S`` kills one engine replica's process (SIGKILL) S seconds in. It then
stops the server and prints, and writes as JSON: the answers by status (with the error of each failure), the
latency of the successes before, around and after the kill, the time until ``/readyz`` counts every replica
again, and the RSS of each kind of process in the first and the last minute.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

PROMPTS = ("a dog barking", "rain on a tin roof", "a violin melody", "thunder in the distance", "birds at dawn")
#: Process kinds by what their command line holds (Ray names its workers ``ray::...``).
KINDS = (
    ("EngineReplica", "engine replica"),
    ("Ingress", "ingress"),
    ("ProxyActor", "HTTP proxy"),
    ("ServeController", "Serve controller"),
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("cli serve --engine", "command"),
)
SAMPLE_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audioldm_trt.serve.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", required=True, type=Path)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=3, help="requests kept in flight")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--kill-replica-at", type=float, help="seconds into the run")
    parser.add_argument("--durations", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="seconds of audio")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--output", type=Path, default=Path("soak.json"))
    parser.add_argument("serve_args", nargs="*", help="more `audioldm-trt serve` arguments (after --)")
    args = parser.parse_args(argv)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "audioldm_trt.engine.cli", "serve", "--engine", str(args.engine)]
    command += ["--port", str(port), "--replicas", str(args.replicas), *args.serve_args]
    log = args.output.with_suffix(".log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(url, args.replicas, server)
        record = _run(url, server.pid, args)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    record["server_exit_status"] = server.returncode
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(_summary(record), indent=2))
    print(f"wrote {args.output} (server output in {args.output.with_suffix('.log')})")
    return 0


def _run(url: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    end = started + 60 * args.minutes
    answers: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    kill: dict[str, Any] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        draw = random.Random(index)
        while time.monotonic() < end:
            body = {
                "prompt": draw.choice(PROMPTS),
                "duration": draw.choice(args.durations),
                "steps": draw.choice(args.steps),
                "seed": draw.randrange(2**32),
            }
            sent = time.monotonic()
            status, error = _post(url, body)
            with lock:
                answers.append({"sent": sent - started, "seconds": time.monotonic() - sent, "status": status, **error})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    while time.monotonic() < end:
        now = time.monotonic() - started
        samples.append({"at": now, "rss_mib": _rss_by_kind(server_pid)})
        if args.kill_replica_at is not None and not kill and now >= args.kill_replica_at:
            kill = _kill_a_replica(server_pid, url, args.replicas, started)
        time.sleep(SAMPLE_SECONDS)
    for thread in threads:
        thread.join()
    return {"settings": {k: str(v) for k, v in vars(args).items()}, "answers": answers, "rss": samples, "kill": kill}


def _kill_a_replica(server_pid: int, url: str, replicas: int, started: float) -> dict[str, Any]:
    victims = [pid for pid, line in _tree(server_pid).items() if "EngineReplica" in line]
    if not victims:
        return {"error": "no engine replica process found"}
    os.kill(victims[0], signal.SIGKILL)
    killed = time.monotonic()
    while time.monotonic() - killed < 600:
        ready = _get_json(url + "/readyz")
        if ready.get("replicas") == replicas and victims[0] not in _tree(server_pid):
            break
        time.sleep(0.5)
    return {"pid": victims[0], "at": killed - started, "back_after": time.monotonic() - killed}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    answers = record["answers"]
    statuses = Counter(str(a["status"]) for a in answers)
    failures = Counter(f"{a['status']}: {a.get('error')}" for a in answers if a["status"] != 200)
    summary: dict[str, Any] = {"requests": len(answers), "by_status": dict(statuses), "failures": dict(failures)}
    kill = record["kill"]
    if kill.get("at") is not None:
        around = [a for a in answers if a["sent"] <= kill["at"] <= a["sent"] + a["seconds"]]
        summary["kill"] = {
            **kill,
            "in_flight_at_kill": dict(Counter(str(a["status"]) for a in around)),
            "slowest_in_flight_at_kill": max((a["seconds"] for a in around), default=None),
            "after": dict(Counter(str(a["status"]) for a in answers if a["sent"] > kill["at"] + kill["back_after"])),
        }
    ok = [a["seconds"] for a in answers if a["status"] == 200]
    if len(ok) > 1:
        summary["latency_s"] = {"median": statistics.median(ok), "max": max(ok)}
    rss = record["rss"]
    if rss:
        minute = 60 / SAMPLE_SECONDS
        first, last = rss[: int(minute)], rss[-int(minute) :]
        kinds = sorted({kind for sample in rss for kind in sample["rss_mib"]})
        summary["rss_mib_first_vs_last_minute"] = {
            kind: [round(_mean(s["rss_mib"].get(kind, 0.0) for s in part), 1) for part in (first, last)]
            for kind in [*kinds, "total"]
        }
    return summary


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _rss_by_kind(root: int) -> dict[str, float]:
    by_kind: dict[str, float] = {}
    for pid, line in _tree(root).items():
        kind = next((name for key, name in KINDS if key in line), "other Ray processes")
        try:
            pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        by_kind[kind] = by_kind.get(kind, 0.0) + pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    by_kind["total"] = sum(by_kind.values())
    return dict(by_kind)


def _tree(root: int) -> dict[int, str]:
    """The process ``root`` and its descendants, with their command lines."""
    parents: dict[int, int] = {}
    lines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return {pid: lines.get(pid, "") for pid in tree}


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url + "/v1/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=900) as response:
            response.read()
            return response.status, {}
    except urllib.error.HTTPError as error:
        return error.code, {"error": json.loads(error.read() or b"{}").get("error", "")}
    except OSError as error:
        return 0, {"error": f"{type(error).__name__}: {error}"}


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.loads(response.read()))
    except (OSError, ValueError):
        return {}


def _wait_ready(url: str, replicas: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 900
    while _get_json(url + "/readyz").get("replicas") != replicas:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not become ready (exit status {server.poll()})")
        time.sleep(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
