"""`audioldm-trt serve` as users run it: the installed command in a subprocess (its own local Ray instance),
real HTTP, the tiny model. One server for the module; each test leaves it idle."""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import Engine
from audioldm_trt.serve.api import MAX_BODY_BYTES
from audioldm_trt.serve.ingress import READINESS_TTL_SECONDS

from conftest import ModelUnderTest

CLI = str(Path(sys.executable).with_name("audioldm-trt"))
REPOSITORY = Path(__file__).resolve().parent.parent
#: Seconds a server may take to start: Ray, the ingress, the engine replicas and their warm-up.
START_TIMEOUT = 300


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """``audioldm-trt serve`` in a subprocess, its output in a log file."""

    def __init__(self, log: Path, *arguments: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "w") as output:
            self.process = subprocess.Popen(
                [CLI, "serve", "--port", str(self.port), *arguments], stdout=output, stderr=subprocess.STDOUT, env=env
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while "serving on" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start:\n{self.output()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return request(urllib.request.Request(self.url + path, headers=headers or {}))

    def post(self, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> Answer:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        return request(urllib.request.Request(self.url + "/v1/generate", data=data, headers=headers, method="POST"))

    def open_stream(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> socket.socket:
        """A streamed POST on a connection of its own, for a test that reads the answer as it comes or leaves
        before its end; ``until`` reads it."""
        connection = socket.create_connection(("127.0.0.1", self.port))
        data = json.dumps({**body, "stream": True}).encode()
        lines = [f"{name}: {value}\r\n" for name, value in {**(headers or {}), "Content-Length": len(data)}.items()]
        connection.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + "".join(lines).encode()
            + b"\r\n"
            + data
        )
        return connection

    def metrics(self, fresh: bool = False) -> dict[str, float]:
        """The metrics' samples by name and labels, replicas summed: ``{'audioldm_requests_total{status="200"}':
        3.0, ...}``. The replicas' series are looked at once a second at most; ``fresh``: wait that out."""
        if fresh:
            time.sleep(READINESS_TTL_SECONDS + 0.1)
        samples: dict[str, float] = {}
        for line in self.get("/metrics").body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                name = re.sub(r',?replica="[^"]*"', "", name).replace("{}", "")
                samples[name] = samples.get(name, 0.0) + float(value)
        return samples

    def wait_metric(self, name: str, predicate: Any, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics().get(name, 0.0)
            if predicate(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.2)


def until(connection: socket.socket, marker: bytes) -> bytes:
    """What the connection sends up to and including ``marker`` (and whatever came in the same reads)."""
    received = b""
    while marker not in received:
        chunk = connection.recv(4096)
        assert chunk, received
        received += chunk
    return received


def request(req: urllib.request.Request, timeout: float = 300) -> Answer:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pcm16(audio: np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """What a 16-bit WAV of ``audio`` holds, as soundfile writes it for ``audioldm-trt generate``."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, sampling_rate, format="WAV", subtype="PCM_16")
    buffer.seek(0)
    return soundfile.read(buffer, dtype="int16")[0].astype(np.int32)


def decoded(data: bytes) -> np.ndarray:
    return soundfile.read(io.BytesIO(data), dtype="int16")[0].astype(np.int32)


def assert_same_audio(served: bytes, expected: np.ndarray) -> None:
    """The served file holds ``expected``: equal samples up to one step of 16-bit rounding (the float audio
    of a batched call may differ from a lone one's in the last bits, which can flip a rounding)."""
    assert np.abs(decoded(served) - pcm16(expected)).max() <= 1


#: HTTP bodies differing in everything a request can, and the Engine.generate arguments of each.
MIXED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"prompt": "a dog barking", "duration": 1.0, "steps": 4, "seed": 1}, {}),
    ({"prompt": "rain on a roof", "duration": 1.0, "steps": 6, "seed": 2, "guidance": 1.0}, {"guidance_scale": 1.0}),
    ({"prompt": "a violin", "duration": 0.6, "steps": 3, "seed": 3, "scheduler": "HeunDiscreteScheduler"}, {}),
    (
        {"prompt": "thunder", "duration": 1.0, "steps": 5, "seed": 4, "waveforms": 2, "negative_prompt": "noise"},
        {"num_waveforms_per_prompt": 2, "negative_prompt": "noise"},
    ),
    ({"prompt": "birds", "duration": 0.6, "steps": 4, "seed": 5, "eta": 0.5, "format": "flac"}, {"eta": 0.5}),
    ({"prompt": "a train", "steps": 2, "seed": 6, "scheduler": "EulerAncestralDiscreteScheduler"}, {}),
]


def reference(model: ModelUnderTest, body: dict[str, Any], extra: dict[str, Any]) -> np.ndarray:
    """Engine.generate's audio for an HTTP body (``extra``: the arguments beyond prompt, duration, steps, seed)."""
    scheduler = body.get("scheduler")
    engine = model.engine if scheduler is None else Engine.load(model.export, "onnxruntime-cpu", scheduler=scheduler)
    return engine.generate(
        body["prompt"],
        audio_length_in_s=body.get("duration"),
        num_inference_steps=body["steps"],
        seed=body["seed"],
        **extra,
    )


@pytest.fixture(scope="module")
def expected(tiny: ModelUnderTest) -> list[np.ndarray]:
    return [reference(tiny, body, extra) for body, extra in MIXED]


@pytest.fixture(scope="module")
def server(tiny: ModelUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The one-command local server: 4 + 2 requests at once (6 answers before a 429); the vocoder in windows of
    0.3 s; without the playground (tests/test_playground.py drives it)."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    arguments = ["--engine", str(tiny.export), "--max-batch", "4", "--max-queue", "2", "--max-duration", "6"]
    arguments += ["--vocoder-chunk", "0.3"]
    server = Server(log, *arguments, "--max-steps", "400", "--request-timeout", "120", "--no-playground")
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()
    assert server.process.returncode == 0, server.output()[-3000:]
    assert "stopped" in server.output()


def test_health_readiness_and_api_page(server: Server) -> None:
    assert server.get("/healthz").json() == {"status": "alive"}
    assert server.get("/readyz").json() == {"status": "ready", "replicas": 1}
    schema = server.get("/openapi.json").json()
    body = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["prompt"]
    assert {
        "prompt",
        "duration",
        "steps",
        "guidance",
        "seed",
        "eta",
        "scheduler",
        "waveforms",
        "format",
        "stream",
    } <= set(body["properties"])
    assert b"swagger" in server.get("/docs").body.lower()


def test_no_playground_is_404_and_the_info_is_open_without_a_key(server: Server) -> None:
    for path in ("/", "/playground.js", "/playground.css"):
        answer = server.get(path)
        assert answer.status == 404
        assert answer.json() == {"error": "the playground is off on this server (--no-playground)"}
    assert f"serving on {server.url} (API at /docs); Ctrl-C stops" in server.output()
    info = server.get("/v1/info").json()
    assert info["limits"] == {"max_steps": 400, "max_duration": 6.0, "max_waveforms": 4}
    assert "HeunDiscreteScheduler" in info["schedulers"]


def test_concurrent_requests_each_get_their_own_audio(server: Server, expected: list[np.ndarray]) -> None:
    """Different durations, steps, schedulers, guidance, waveforms and seeds at once: each answer holds
    Engine.generate's audio for its own arguments."""
    with ThreadPoolExecutor(len(MIXED)) as pool:
        answers = list(pool.map(lambda pair: server.post(pair[0]), MIXED))
    for (body, _), answer, audio in zip(MIXED, answers, expected, strict=True):
        assert answer.status == 200, answer.body
        result = answer.json()
        assert result["seed"] == body["seed"] and result["sampling_rate"] == 16000
        files = [base64.b64decode(data) for data in result["audio"]]
        assert len(files) == body.get("waveforms", 1)
        kind = soundfile.info(io.BytesIO(files[0])).format
        assert kind == body.get("format", "wav").upper()
        for served, waveform in zip(files, audio, strict=True):
            assert_same_audio(served, waveform)
        timings = result["timings"]
        assert set(timings) == {"queue", "unet", "vae_decoder", "vocoder", "total"}
        assert 0 <= timings["queue"] < timings["total"] and timings["unet"] > 0
    # Other arguments give other audio: the parity above is not that of any audio.
    assert np.abs(pcm16(expected[0][0]) - pcm16(expected[1][0])).max() > 100


def test_raw_audio_answers_carry_the_seed(server: Server, expected: list[np.ndarray]) -> None:
    body, _ = MIXED[0]
    answer = server.post(body, {"Accept": "audio/wav"})
    assert answer.status == 200 and answer.headers["content-type"] == "audio/wav"
    assert answer.headers["x-seed"] == "1"
    assert_same_audio(answer.body, expected[0][0])
    # A drawn seed comes back and reproduces the audio.
    drawn = server.post({"prompt": "a dog barking", "steps": 2}, {"Accept": "audio/flac"})
    assert drawn.status == 200 and drawn.headers["content-type"] == "audio/flac"
    again = server.post(
        {"prompt": "a dog barking", "steps": 2, "seed": int(drawn.headers["x-seed"])}, {"Accept": "audio/flac"}
    )
    assert np.array_equal(decoded(again.body), decoded(drawn.body))


def sse_events(data: bytes) -> list[tuple[str, Any]]:
    return [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
        for block in data.decode().strip().split("\n\n")
    ]


def test_stream_sends_progress_then_the_result(server: Server, expected: list[np.ndarray]) -> None:
    body, _ = MIXED[2]  # Heun, 3 steps: 5 UNet calls
    answer = server.post({**body, "stream": True})
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.body)
    assert events[:5] == [("progress", {"step": i, "steps": 5}) for i in range(1, 6)]
    assert {name for name, _ in events[5:-1]} == {"audio"}
    name, result = events[-1]
    assert name == "result" and result["seed"] == 3
    assert_same_audio(base64.b64decode(result["audio"][0]), expected[2][0])


def test_streamed_audio_chunks_are_the_samples_of_the_final_file(server: Server) -> None:
    """2 s of two waveforms in windows of 0.3 s: audio events as the vocoder makes them, each waveform's
    chunks joined in offset order exactly the 16-bit samples of its file in the result."""
    body = {"prompt": "a waterfall", "duration": 2.0, "steps": 3, "seed": 9, "waveforms": 2, "stream": True}
    answer = server.post(body)
    events = sse_events(answer.body)
    names = [name for name, _ in events]
    assert names[:3] == ["progress"] * 3 and names[-1] == "result" and set(names[3:-1]) == {"audio"}
    audio_events = [data for name, data in events if name == "audio"]
    assert len(audio_events) >= 2 * 5 and {e["waveform"] for e in audio_events} == {0, 1}
    files = events[-1][1]["audio"]
    for waveform, file in enumerate(files):
        chunks = sorted((e["offset"], e["pcm16"]) for e in audio_events if e["waveform"] == waveform)
        samples = np.concatenate([np.frombuffer(base64.b64decode(pcm), "<i2") for _, pcm in chunks])
        offsets = [offset for offset, _ in chunks]
        assert offsets == list(np.cumsum([0] + [len(base64.b64decode(p)) // 2 for _, p in chunks[:-1]]))
        assert np.array_equal(samples.astype(np.int32), decoded(base64.b64decode(file)))
    assert not np.array_equal(decoded(base64.b64decode(files[0])), decoded(base64.b64decode(files[1])))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "a", "scheduler": "FooScheduler"}, "scheduler: unknown scheduler 'FooScheduler'"),
        ({"prompt": "a", "steps": 401}, "steps: 401 is above this server's limit of 400"),
        ({"prompt": "a", "duration": 6.5}, "duration: 6.5 s is above this server's limit of 6 s"),
        ({"prompt": "a", "duration": 0.001}, "duration must be at least"),
        ({"prompt": "a", "waveforms": 5}, "waveforms: 5 is above this server's limit of 4"),
        ({"prompt": "a", "steps": 0}, "steps: Input should be greater than or equal to 1"),
        ({"prompt": "a", "guidance": "strong"}, "guidance: Input should be a valid number"),
        ({"prompt": "a", "format": "mp3"}, "format: Input should be 'wav' or 'flac'"),
        ({"prompt": "a", "temperature": 1}, "temperature: Extra inputs are not permitted"),
        ({"steps": 3}, "prompt: Field required"),
        ({"prompt": "a" * 2001}, "prompt: String should have at most 2000 characters"),
        ({"prompt": "a dog " * 300}, "prompt: 603 tokens is more than the model reads (512)"),
        # diffusers truncates negative prompts at the embedding size: 16 for the tiny model.
        (
            {"prompt": "a", "negative_prompt": "noise " * 20},
            "negative_prompt: 23 tokens is more than the model reads (16)",
        ),
        (b'{"prompt": ', "body: Invalid JSON"),
        ({"prompt": "a", "eta": 1.5}, "eta: Input should be less than or equal to 1"),
        ({"prompt": "a", "guidance": 1e300}, "guidance: Input should be less than or equal to 100"),
        ({"prompt": "a", "steps": "5"}, "steps: Input should be a valid integer"),
        ({"prompt": "a", "seed": "5"}, "seed: Input should be a valid integer"),
        ({"prompt": "a", "stream": "true"}, "stream: Input should be a valid boolean"),
        ({"prompt": "a", "waveforms": True}, "waveforms: Input should be a valid integer"),
        ({"prompt": " \t "}, "prompt: must not be empty or only whitespace"),
        ({"prompt": "a", "input_audio": "!!"}, "input_audio: must be a file in base64"),
        ({"prompt": "a", "input_audio": "bm90IGF1ZGlv"}, "input_audio: cannot read audio"),
        ({"prompt": "a", "strength": 0.5}, "strength, inpaint, super_resolution and extend need an input audio"),
        ({"prompt": "a", "strength": 1.5}, "strength: Input should be less than or equal to 1"),
        ({"prompt": "a", "inpaint": [0.5]}, "inpaint"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_bad_fields_are_422_naming_the_field(server: Server, body: dict[str, Any] | bytes, message: str) -> None:
    answer = server.post(body)
    assert answer.status == 422
    error = answer.json()["error"]
    assert message in error and "\n" not in error


def test_a_body_over_the_limit_is_413(server: Server) -> None:
    """Refused on its declared length, unread: the limit leaves room for a 12 MiB input clip in base64."""
    size = MAX_BODY_BYTES + 1
    connection = socket.create_connection(("127.0.0.1", server.port))
    connection.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
        + b'{"prompt": "'
    )
    answer = until(connection, b'bytes"}')
    connection.close()
    assert answer.startswith(b"HTTP/1.1 413")
    assert f"body: {size} bytes is larger than the limit of {MAX_BODY_BYTES} bytes".encode() in answer
    assert MAX_BODY_BYTES > 16 * 1024 * 1024


def _clip(seconds: float = 1.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.4 * np.sin(2 * np.pi * 330 * t) * np.exp(-t), 16000, format="FLAC")
    return buffer.getvalue()


def test_audio_modes_batched_with_text_to_audio(server: Server, tiny: ModelUnderTest) -> None:
    """Style transfer, inpainting, super-resolution and continuation sent at once with a text-to-audio request
    of the same length: each answer is its own Engine.generate's audio. (This CPU server's policy, deadline,
    runs one request per call; tests/test_serve_loop.py fills calls with these modes and text-to-audio.)"""
    clip = _clip()
    given = {"input_audio": base64.b64encode(clip).decode()}
    requests = [
        ({"prompt": "a dog barking", "duration": 1.0, "steps": 6, "seed": 1}, {}),
        ({"prompt": "a cat", "steps": 6, "seed": 7, **given, "strength": 0.5}, {"audio": clip, "strength": 0.5}),
        (
            {"prompt": "a cat", "steps": 6, "seed": 8, **given, "inpaint": [0.2, 0.5]},
            {"audio": clip, "inpaint": (0.2, 0.5)},
        ),
        (
            {"prompt": "a cat", "steps": 6, "seed": 9, **given, "super_resolution": 3000.0},
            {"audio": clip, "super_resolution": 3000.0},
        ),
        ({"prompt": "a cat", "steps": 6, "seed": 10, **given, "extend": 0.5}, {"audio": clip, "extend": 0.5}),
    ]
    expected = [reference(tiny, body, extra) for body, extra in requests]
    before = server.metrics()
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda pair: server.post(pair[0]), requests))
    after = server.metrics(fresh=True)
    # each request's UNet calls went through the step loop (strength 0.5: 3 of 6)
    assert after["audioldm_batch_size_sum"] - before["audioldm_batch_size_sum"] == 6 + 3 + 6 + 6 + 6
    for answer, audio in zip(answers, expected, strict=True):
        assert answer.status == 200, answer.body
        (served,) = [base64.b64decode(data) for data in answer.json()["audio"]]
        assert_same_audio(served, audio[0])
    assert decoded(base64.b64decode(answers[-1].json()["audio"][0])).shape == (24000,)
    # the modes are not the same audio
    assert np.abs(pcm16(expected[1][0]) - pcm16(expected[2][0])).max() > 100


def test_raw_audio_of_several_waveforms_is_422(server: Server) -> None:
    answer = server.post({"prompt": "a", "waveforms": 2}, {"Accept": "audio/wav"})
    assert answer.status == 422 and answer.json()["error"].startswith("waveforms: a raw audio answer holds one")


def test_a_full_server_is_still_ready_and_scraped_at_once(server: Server) -> None:
    """Status looks have slots of their own on the replicas: a replica holding all it takes still answers them."""
    body = {"prompt": "a crowd", "duration": 1.0, "steps": 100, "seed": 7}
    with ThreadPoolExecutor(6) as pool:
        held = [pool.submit(server.post, body) for _ in range(6)]
        assert server.wait_metric("audioldm_requests_in_flight", lambda n: n == 6) == 6
        for path in ("/readyz", "/metrics"):
            started = time.monotonic()
            assert server.get(path).status == 200 and time.monotonic() - started < 3, path
        assert server.post({"prompt": "one more", "steps": 2}).status == 429
        assert all(answer.result().status == 200 for answer in held)


def test_overload_is_429_and_every_request_is_answered(server: Server) -> None:
    """Twice the capacity at once: 6 are served, the others refused at once with Retry-After; none is lost.
    The requests are long enough (seconds) that none ends before the last has arrived, on a busy machine too."""
    before = server.metrics()
    body = {"prompt": "a crowd", "duration": 1.0, "steps": 150, "seed": 7}
    together = threading.Barrier(12)

    def post(_: int) -> Answer:
        together.wait()
        return server.post(body)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, range(12)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 6 + [429] * 6, statuses
    for refused in (a for a in answers if a.status == 429):
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"].startswith("the queue is full")
    served = [decoded(base64.b64decode(a.json()["audio"][0])) for a in answers if a.status == 200]
    assert all(np.array_equal(audio, served[0]) for audio in served)
    after = server.metrics()
    for status, count in (("200", 6), ("429", 6)):
        key = f'audioldm_requests_total{{status="{status}"}}'
        assert after[key] - before.get(key, 0.0) == count
    assert after["audioldm_requests_in_flight"] == 0


def test_a_client_that_disconnects_frees_its_slot(server: Server) -> None:
    before = server.metrics()
    connection = server.open_stream({"prompt": "a long one", "duration": 5, "steps": 400})
    until(connection, b"event: progress")  # it is in the batch
    assert server.wait_metric("audioldm_replica_requests", lambda held: held == 1) == 1
    connection.close()
    assert server.wait_metric("audioldm_replica_requests", lambda held: held == 0) == 0
    calls = server.metrics(fresh=True)["audioldm_unet_calls_total"]
    assert calls - before["audioldm_unet_calls_total"] < 400
    time.sleep(1.0)
    assert server.metrics(fresh=True)["audioldm_unet_calls_total"] == calls  # its work stopped
    key = 'audioldm_requests_total{status="499"}'
    assert server.wait_metric(key, lambda n: n > before.get(key, 0.0)) == before.get(key, 0.0) + 1
    assert server.metrics()["audioldm_requests_in_flight"] == 0


def test_metrics_count_what_happened(server: Server) -> None:
    before = server.metrics()
    assert server.post({"prompt": "one", "duration": 1.0, "steps": 3, "seed": 1}).status == 200
    assert server.post({"prompt": "two", "duration": 1.0, "steps": 2, "seed": 2, "guidance": 1}).status == 200
    assert server.post({"prompt": "bad", "steps": 9999}).status == 422
    after = server.metrics(fresh=True)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta('audioldm_requests_total{status="200"}') == 2
    assert delta('audioldm_requests_total{status="422"}') == 1
    assert delta("audioldm_unet_calls_total") == 5  # sequential requests: 3 + 2 calls of one request each
    assert delta("audioldm_unet_rows_total") == 3 * 2 + 2 * 1  # guidance doubles the first one's rows
    assert delta("audioldm_batch_size_count") == 5 and delta("audioldm_batch_size_sum") == 5
    for histogram in ("queue", "compute", "request"):
        assert delta(f"audioldm_{histogram}_seconds_count") == 2
    assert delta("audioldm_compute_seconds_sum") > 0
    assert after["audioldm_replicas_ready"] == 1


def readme_curl_examples() -> list[str]:
    text = (REPOSITORY / "README.md").read_text()
    section = text[text.index("### HTTP API") : text.index("### Metrics")]
    return [line for line in section.splitlines() if line.startswith("curl ")]


def test_readme_curl_examples_work_as_written(server: Server, tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's examples need curl"
    examples = readme_curl_examples()
    assert len(examples) == 8
    outputs = {}
    for line in examples:
        command = shlex.split(line.replace("http://127.0.0.1:8000", server.url))
        result = subprocess.run(command, capture_output=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, (line, result.stderr)
        path = command[2].removeprefix(server.url)
        outputs[path] = outputs.get(path, b"") + result.stdout
    assert soundfile.info(tmp_path / "dog.wav").duration == pytest.approx(1.28)
    assert soundfile.info(tmp_path / "rain.flac").format == "FLAC"
    assert soundfile.info(tmp_path / "rain.flac").duration == pytest.approx(2.0)
    assert b"x-seed: 0" in outputs["/v1/generate"].lower()
    assert b'"seed":0' in outputs["/v1/generate"] and b"event: result" in outputs["/v1/generate"]
    assert b"alive" in outputs["/healthz"] and b"ready" in outputs["/readyz"]
    assert json.loads(outputs["/v1/info"])["limits"]["max_steps"] == 400
    assert b"audioldm_requests_total" in outputs["/metrics"]
