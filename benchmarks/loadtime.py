"""``python -m audioldm_trt.benchmarks.loadtime``: how long a fresh process takes to load an export.

A server that scales from zero pays the load on every cold start, so this times it as the server meets it: each
sample is a fresh Python process that imports what it needs and loads the export, measured from the first
import to the last session created. Three contenders, in the same rounds:

- ``onnxruntime``: bare ``onnxruntime.InferenceSession`` creation of the four graphs, one after another, with
  ONNX Runtime's default options: the floor any ONNX Runtime engine starts from.
- ``onnxruntime-concurrent``: the same sessions created concurrently, as ``Engine.load`` creates them.
- ``engine``: ``Engine.load(DIR, backend="onnxruntime-cpu")``: the same sessions, plus checking every file
  against the manifest, the tokenizer and the empty prompt's embedding.

Each round runs every contender once, in an order that rotates from round to round, after untimed warm-up
rounds that bring the files into the page cache (a cold cache adds the disk's read time to every contender).
The ratio is the median over rounds of the engine's time / bare ONNX Runtime's (one after another) in the same
round. ``--profile`` instead times the steps of a load one by one, in one fresh process, to show where the time
goes. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..engine.cli import non_negative_int, positive_int
from ..engine.errors import EngineDirectoryError
from ..engine.files import write_atomically
from ..engine.manifest import GRAPH_NAMES, Manifest
from . import machine

CONTENDERS = ("onnxruntime", "onnxruntime-concurrent", "engine")
#: What the report calls each contender.
TITLES = {
    "onnxruntime": "bare ONNX Runtime, sessions one after another",
    "onnxruntime-concurrent": "bare ONNX Runtime, sessions concurrently",
    "engine": "Engine.load",
}

#: The code each fresh process runs: a clock started before any import, the contender's imports and load,
#: then one line of JSON. The bare contenders import nothing of this project.
_CLOCK = "import json, resource, sys, time\nstarted = time.perf_counter()\n"
_REPORT = (
    "finished = time.perf_counter()\n"
    "print(json.dumps({'imports': imported - started, 'load': finished - imported, 'total': finished - started,"
    " 'cpu': time.process_time(), 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
)
_BARE = """import os
from concurrent.futures import ThreadPoolExecutor
import onnxruntime
imported = time.perf_counter()
paths = sys.argv[2:]  # largest first

def create(path):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

if sys.argv[1] == "concurrent":
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
        sessions = list(pool.map(create, paths))
else:
    sessions = [create(path) for path in paths]
"""
_ENGINE = """from audioldm_trt.engine import Engine
imported = time.perf_counter()
engine = Engine.load(sys.argv[1], backend="onnxruntime-cpu")
"""


def measure(contender: str, directory: Path, manifest: Manifest) -> dict[str, float]:
    """One sample: a fresh process loads the export as ``contender`` does."""
    if contender == "engine":
        code, arguments = _ENGINE, [str(directory)]
    else:
        largest_first = sorted(GRAPH_NAMES, key=manifest.graph_bytes, reverse=True)
        mode = "concurrent" if contender == "onnxruntime-concurrent" else "sequential"
        code, arguments = _BARE, [mode, *(str(directory / manifest.graphs[g].onnxruntime_file) for g in largest_first)]
    sample: dict[str, float] = _fresh_process(_CLOCK + code + _REPORT, arguments)
    return sample


def compare(directory: Path, runs: int, warmup: int) -> dict[str, Any]:
    """``runs`` timed rounds of every contender, after ``warmup`` untimed ones."""
    manifest = Manifest.load(directory)
    samples: dict[str, list[dict[str, float]]] = {c: [] for c in CONTENDERS}
    for round_index in range(warmup + runs):
        shift = round_index % len(CONTENDERS)
        for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
            sample = measure(contender, directory, manifest)
            if round_index >= warmup:
                samples[contender].append(sample)
    ratios = [e["total"] / o["total"] for e, o in zip(samples["engine"], samples["onnxruntime"], strict=True)]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": str(directory),
        "graph_bytes": sum(manifest.graph_bytes(g) for g in GRAPH_NAMES),
        "runs": samples,
        "warmup": warmup,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "machine": machine.describe_machine(),
        "versions": machine.versions(),
    }


def markdown(record: dict[str, Any]) -> str:
    machine_info = record["machine"]
    lines = [
        f"Load of {record['engine']} ({record['graph_bytes'] / 2**30:.2f} GiB of graphs) in a fresh process, from"
        f" the first import: median (min) of {len(record['runs']['engine'])} rounds after {record['warmup']}"
        " warm-up round(s), warm page cache.",
        "",
        f"Machine: {machine_info['cpu']}, {machine_info['logical_cores']} logical cores,"
        f" {machine_info['ram_gib']} GiB RAM; onnxruntime {record['versions'].get('onnxruntime', '?')}.",
        "",
        "| contender | imports (s) | load (s) | total (s) | CPU (s) | peak RSS (MiB) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for contender in CONTENDERS:
        runs = record["runs"][contender]
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        lines.append(
            f"| {TITLES[contender]} | {median['imports']:.2f} | {median['load']:.2f} | {median['total']:.2f}"
            f" ({min(r['total'] for r in runs):.2f}) | {median['cpu']:.2f} | {median['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        f"Engine.load / bare ONNX Runtime (one after another), median ratio over rounds: {record['ratio']:.2f}"
        f" (rounds: {min(record['ratios']):.2f} to {max(record['ratios']):.2f})",
    ]
    return "\n".join(lines)


#: The steps of a load, timed one by one in one fresh process by ``--profile``.
_PROFILE = """import json, resource, sys, time
from pathlib import Path
steps = {}
clock = (time.perf_counter(), time.process_time())
def step(name):
    global clock
    now = (time.perf_counter(), time.process_time())
    steps[name] = (now[0] - clock[0], now[1] - clock[1])
    clock = now
import numpy, tokenizers
step("import numpy, tokenizers")
from audioldm_trt.engine import Engine
from audioldm_trt.engine.backends import create_backend
from audioldm_trt.engine.manifest import GRAPH_NAMES, Manifest
from audioldm_trt.engine.tokenizer import PromptTokenizer
step("import audioldm_trt.engine")
import onnxruntime
step("import onnxruntime")
directory = Path(sys.argv[1])
manifest = Manifest.load(directory)
step("read the manifest")
manifest.verify(directory)
step("hash every file (" + ", ".join(sorted({r.checked_digest[0] for r in manifest.files.values()})) + ")")
backend = create_backend("onnxruntime-cpu", directory, manifest)
graphs = {}
for name in GRAPH_NAMES:
    graphs[name] = backend.load(directory, manifest, name)
    step(f"session {name}")
tokenizer = PromptTokenizer.from_directory(directory / "tokenizer")
step("tokenizer")
ids, mask = tokenizer([""])
graphs["text_encoder"].run({"input_ids": ids, "attention_mask": mask})
step("empty prompt's embedding (text encoder call)")
print(json.dumps(steps))
"""


def profile(directory: Path, runs: int) -> str:
    """The median wall and CPU seconds of each step over ``runs`` fresh processes, as a markdown table."""
    samples: list[dict[str, list[float]]] = []
    for _ in range(runs):
        samples.append(_fresh_process(_PROFILE, [str(directory)]))
    steps = {name: [statistics.median(s[name][i] for s in samples) for i in (0, 1)] for name in samples[0]}
    total = sum(wall for wall, _ in steps.values())
    lines = [
        f"Steps of a load of {directory}, one after another in a fresh process: median of {runs} processes.",
        "",
        "| step | wall (s) | share | CPU (s) |",
        "|---|--:|--:|--:|",
    ]
    lines += [f"| {name} | {wall:.3f} | {wall / total:.0%} | {cpu:.3f} |" for name, (wall, cpu) in steps.items()]
    lines.append(f"| all | {total:.3f} | | {sum(cpu for _, cpu in steps.values()):.3f} |")
    return "\n".join(lines)


def _fresh_process(code: str, arguments: list[str]) -> Any:
    """What ``code``, run in a new Python process with ``arguments``, prints as JSON on its last line."""
    result = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise RuntimeError(f"a benchmark process failed: {lines[-1] if lines else 'no output'}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m audioldm_trt.benchmarks.loadtime", description=__doc__)
    parser.add_argument("--engine", type=Path, required=True, help="export directory (audioldm-trt export)")
    parser.add_argument(
        "--runs", type=positive_int, default=5, help="timed rounds, or processes with --profile (default 5)"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--output", type=Path, help="also write the full record here, as JSON")
    parser.add_argument("--profile", action="store_true", help="time the steps of one load instead")
    args = parser.parse_args(argv)
    try:
        Manifest.load(args.engine)
    except EngineDirectoryError as error:
        parser.error(str(error))
    if args.profile:
        print(profile(args.engine, args.runs))
        return
    record = compare(args.engine, args.runs, args.warmup)
    print(markdown(record))
    if args.output is not None:
        write_atomically(args.output, (json.dumps(record, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
