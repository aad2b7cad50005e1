"""The GPU plan (benchmarks/gpu_plan.py) rehearsed end to end on this machine, as the lent GPU machine runs it.

The stand-in for the machine: a fresh virtual environment whose packages are this environment's minus every
distribution the plan carries that the machine's image lacks (so an import that the bundles do not satisfy
fails here as it would there), a checkout laid anew for every call with only plan.json and that call's part
carried, ``$OUT`` emptied per call, and the plan's folder outside the checkout. ONNX Runtime's CPU provider
stands in for CUDA, the tiny preset for s-full-v2; every stage runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from audioldm_trt.benchmarks import gpu_plan

from conftest import AUDIO_TOLERANCE

REPOSITORY = Path(__file__).resolve().parent.parent
STAGES = ["machine", "bench-batch1", "bench-batch4", "gpu-tests", "cpu-row", "loadtest"]


def _hidden_names(plan: dict[str, object]) -> set[str]:
    """The top-level entries of site-packages that belong to carried distributions the image lacks."""
    carried = {gpu_plan._distribution_name(w) for b in plan["bundles"] for w in b["wheels"]}  # type: ignore[attr-defined]
    hidden = set()
    for name in carried - gpu_plan.IMAGE_PACKAGES:
        files = metadata.distribution(name).files or []
        hidden |= {Path(str(f)).parts[0] for f in files if not str(f).startswith("..")}
    return hidden


def _image(root: Path, plan: dict[str, object]) -> dict[str, str]:
    """A fresh venv standing in for the machine's image; the environment its commands run with."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "image")], check=True)
    site_packages = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()))
    farm = root / "image-packages"
    farm.mkdir()
    hidden = _hidden_names(plan)
    for entry in site_packages.iterdir():
        if entry.name in hidden or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (farm / entry.name).symlink_to(entry)
    (image_site,) = (root / "image").glob("lib/python*/site-packages")
    (image_site / "image-packages.pth").write_text(f"{farm}\n")
    environment = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    environment["PATH"] = f"{root / 'image' / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return environment


def test_the_gpu_plan_rehearsed_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    staged = tmp_path / "staged"
    result = subprocess.run(
        [sys.executable, "-m", "audioldm_trt.benchmarks.gpu_plan", "stage", str(staged), "--rehearsal"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads((staged / "plan.json").read_text())
    parts = plan["parts"]
    assert len(parts) > 1 and all(p["size"] <= gpu_plan.rehearsal_profile().part_bytes for p in parts)
    assert [b["name"] for b in plan["bundles"]] == ["base", "onnxruntime", "openvino", "serve"]
    calls = [line for line in result.stdout.splitlines() if re.match(r"\d+\. run\(", line)]
    assert len(calls) == len(parts) and all(len(gpu_plan.call_command(i)) < 2000 for i in range(1, len(parts) + 1))

    environment = _image(tmp_path, plan)
    hidden = subprocess.run(
        ["python3", "-c", "import diffusers"], env=environment, capture_output=True, text=True, cwd=tmp_path
    )
    assert hidden.returncode != 0, "the stand-in image must lack what the plan carries"

    root, outputs = tmp_path / "device", []
    for index, part in enumerate(parts, start=1):
        checkout = tmp_path / f"checkout-{index}"
        gpu_plan._copy_sources(REPOSITORY, checkout)  # the working tree, as a device call receives it
        (checkout / gpu_plan.PLAN_FOLDER).mkdir()
        for name in ("plan.json", part["file"]):
            shutil.copyfile(staged / name, checkout / gpu_plan.PLAN_FOLDER / name)
        out = tmp_path / f"out-{index}"
        command = gpu_plan.call_command(index).replace('"$OUT"', str(out)) + f" --root {root}"
        call = subprocess.run(
            ["bash", "-c", command], cwd=checkout, env=environment, capture_output=True, text=True, timeout=600
        )
        assert call.returncode == 0, call.stdout + call.stderr
        assert not (checkout / gpu_plan.PLAN_FOLDER / part["file"]).exists()  # moved out of the checkout
        outputs.append((out, call.stdout))
        shutil.rmtree(checkout)

    out, printed = outputs[-1]
    status = json.loads((root / "results" / "status.json").read_text())
    results = {s["name"]: s["result"] for s in status["stages"]}
    assert status["done"] and not status["notes"], status
    for step in ("install base", "prepare models", "install onnxruntime", *STAGES):
        assert results.get(step) == "ok", (step, results, (root / "runner.log").read_text()[-3000:])
    assert "| bench-batch1 | ok |" in (out / "gpu-plan-table.md").read_text() and "bench-batch1: ok" in printed

    with tarfile.open(out / "gpu-plan-results.tar.gz") as archive:
        archive.extractall(tmp_path / "back", filter="data")
    back = tmp_path / "back" / "results"
    check = (back / "provider-check.log").read_text()
    assert f"from {root / 'onnxruntime'}" in check and "CPUExecutionProvider" in check
    for stage, batch in (("bench-batch1", 1), ("bench-batch4", 2)):
        record = json.loads((back / stage / "bench.json").read_text())
        engine = next(c for c in record["contenders"] if c["kind"] == "engine")
        assert record["settings"]["batch"] == batch and engine["parity"] < AUDIO_TOLERANCE
        assert engine["versions"]["onnxruntime"].startswith(metadata.version("onnxruntime"))
    cpu_row = json.loads((back / "cpu-row" / "bench.json").read_text())
    assert {c["name"] for c in cpu_row["contenders"]} >= {"audioldm-trt openvino-fp32", "diffusers cpu"}
    assert "skipped" in (back / "gpu-tests.log").read_text()  # no GPU here: skipped, saying why
    loadtest = json.loads(next((back / "loadtest").glob("*.json")).read_text())
    assert "error" not in loadtest["modes"]["step"], loadtest["modes"]
    elapsed = time.monotonic() - started
    print(f"rehearsal: {elapsed:.0f} s")


def test_a_corrupt_part_is_refused(tmp_path: Path) -> None:
    """A part whose bytes differ from plan.json's digest stops the call with one line, before anything joins."""
    plan = {"parts": [{"file": "part-01", "offset": 0, "size": 3, "sha256": "0" * 64}], "bundles": []}
    carried = tmp_path / "checkout" / gpu_plan.PLAN_FOLDER
    carried.mkdir(parents=True)
    (carried / "plan.json").write_text(json.dumps(plan))
    (carried / "part-01").write_bytes(b"abc")
    with pytest.raises(gpu_plan.PlanError, match="part-01 arrived corrupt"):
        gpu_plan.Device(tmp_path / "device").receive(tmp_path / "checkout")


@pytest.mark.parametrize("profile", [gpu_plan.gpu_profile, gpu_plan.rehearsal_profile], ids=["gpu", "rehearsal"])
def test_every_stage_command_parses(profile: Any) -> None:
    """The GPU profile's commands never run here: each ``audioldm-trt`` one is parsed by the real command line
    (a misspelt flag or backend fails now, not in the lent machine's window), and the stages fit the deadline's
    order: the table's first."""
    from audioldm_trt.engine.cli import build_parser

    plan = profile()
    parser = build_parser()
    for stage in plan.stages:
        command = [part.replace("{root}", "/tmp/r").replace("{plan}", "gpu_plan.py") for part in stage.command]
        if command[0] == "audioldm-trt":
            parser.parse_args(command[1:])
    assert [s.name for s in plan.stages][:3] == ["machine", "bench-batch1", "bench-batch4"]
    assert all(stage.budget_s <= plan.deadline_s for stage in plan.stages)
    assert {need for stage in plan.stages for need in stage.needs} <= {b.name for b in plan.bundles}
