"""The benchmark's outputs: per-stage statistics, and the record as JSON, a markdown table and a PNG chart.

Stages are the same for every contender: the four networks, the UNet per step (UNet time / UNet calls), and
"scheduler + host", which is end to end minus the four networks (for diffusers: the scheduler, tokenising,
tensor shuffling and Python; for the engine: the numpy scheduler, tokenising, copies and checks).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..engine.files import write_atomically
from .workers import Sample

#: Stages of the record, in the order of the pipeline; "total" is end to end.
STAGES = ("text_encoder", "unet", "unet_per_step", "vae_decoder", "vocoder", "scheduler_host", "total")
#: The stages that add up to the end-to-end time, with their labels in the table and the chart.
PARTS = {
    "text_encoder": "text encoder",
    "unet": "UNet, all steps",
    "vae_decoder": "VAE decoder",
    "vocoder": "vocoder",
    "scheduler_host": "scheduler + host",
}
NETWORKS = ("text_encoder", "unet", "vae_decoder", "vocoder")
FILE_NAMES = {"json": "bench.json", "markdown": "bench.md", "chart": "bench.png"}


def stage_statistics(samples: Sequence[Sample]) -> dict[str, dict[str, Any]]:
    """Median, 95th percentile and every sample (seconds) of each stage."""
    values: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for sample in samples:
        timings = dict(sample.timings)
        timings["unet_per_step"] = timings["unet"] / max(sample.unet_calls, 1)
        timings["scheduler_host"] = timings["total"] - sum(timings[n] for n in NETWORKS)
        for stage in STAGES:
            values[stage].append(timings[stage])
    return {
        stage: {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "samples": v}
        for stage, v in values.items()
    }


def markdown(record: dict[str, Any]) -> str:
    """Two tables: end to end with load, memory and parity; then the stages (median and p95, ms)."""
    settings, machine, versions = record["settings"], record["machine"], record["versions"]
    rows = record["contenders"]
    library_versions = ", ".join(
        f"{name} {versions[name]}"
        for name in ("torch", "diffusers", "transformers", "onnxruntime", "openvino", "tensorrt")
        if name in versions
    )
    gpu = f"{machine['gpu']} ({machine['gpu_memory_mib']} MiB)" if machine["gpu"] else "no GPU"
    lines = [
        f"**{settings['model']}**: {settings['duration']:g} s of audio, {settings['steps']} steps, guidance "
        f"{settings['guidance']:g}, batch {settings['batch']}; median and p95 of {settings['runs']} interleaved "
        f"runs after {settings['warmup']} warm-up run(s).",
        "",
        f"Machine: {machine['cpu']} (native bf16: {', '.join(machine.get('cpu_bf16') or ['none'])}), "
        f"{machine['logical_cores']} logical cores, {machine['ram_gib']} GiB RAM, {gpu}; "
        f"{machine['os']}; Python {machine['python']}, {library_versions}.",
        "",
        "| contender | end to end, median (s) | p95 (s) | RTF | speed-up | parity | imports (s) | load (s) "
        "| peak RSS (MiB) | GPU memory (MiB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        total = row["stages"]["total"]
        lines.append(
            f"| {row['name']} ({row['precision']}) | {total['median']:.2f} | {total['p95']:.2f} | {row['rtf']:.2f} "
            f"| {_or_dash(row['speedup'], '{:.2f}x')} | {_or_dash(row['parity'], '{:.1e}')} | {row['import_s']:.1f} "
            f"| {row['load_s']:.1f} | {row['peak_rss_mib']:.0f} | {_or_dash(row['gpu_memory_mib'], '{:.0f}')} |"
        )
    columns = ["text_encoder", "unet_per_step", "unet", "vae_decoder", "vocoder", "scheduler_host"]
    lines += [
        "",
        "Per stage, milliseconds, median (p95):",
        "",
        f"| contender | {' | '.join(PARTS.get(c, 'UNet per step') for c in columns)} |",
        "|---|" + "--:|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row['stages'][c]['median'] * 1e3:.1f} ({row['stages'][c]['p95'] * 1e3:.1f})" for c in columns]
        lines.append(f"| {row['name']} | {' | '.join(cells)} |")
    lines += [
        "",
        "RTF: seconds of compute per second of audio (batch x duration). Speed-up: median over runs of "
        "diffusers' time / this time, against diffusers on the same device. Parity: max|audio - diffusers| / "
        "max|diffusers| for the same latents.",
    ]
    lines += _quality_table(rows)
    lines += [f"- {note}" for note in record["notes"]]
    return "\n".join(lines) + "\n"


def _quality_table(rows: list[dict[str, Any]]) -> list[str]:
    """The reduced-precision contenders' distance to the fp32 audio (benchmarks/quality.py), with the engine's
    speed-up over diffusers bf16 and whether it is within diffusers bf16's distance; none without them."""
    reduced = [row for row in rows if row["quality"] is not None]
    if not reduced:
        return []
    lines = [
        "",
        "Quality against the fp32 audio of the same latents on the same device:",
        "",
        "| contender | fp32 reference | relative max difference | SNR (dB) | log-mel distance (dB) "
        "| speed-up vs diffusers bf16 | within diffusers bf16's distance |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in reduced:
        quality, within = row["quality"], row["within_diffusers_bf16"]
        lines.append(
            f"| {row['name']} ({row['precision']}) | {row['quality_reference']} "
            f"| {quality['relative_max_difference']:.1e} "
            f"| {quality['snr_db']:.1f} | {quality['log_mel_distance_db']:.2f} "
            f"| {_or_dash(row['speedup_vs_diffusers_bf16'], '{:.2f}x')} "
            f"| {'-' if within is None else 'yes' if within else 'no'} |"
        )
    lines += [
        "",
        "SNR: 10 log10(sum fp32**2 / sum (audio - fp32)**2). Log-mel distance: RMS over frames and 64 mel bands of "
        "the difference of 10 log10 mel power (64 ms Hann windows every 10 ms, floored 80 dB below the loudest "
        "fp32 bin). Within: no measure worse than diffusers bf16 autocast's.",
    ]
    return lines


def chart(record: dict[str, Any]) -> bytes:
    """A PNG: one horizontal bar per contender, its median stages stacked, the end-to-end median at its end."""
    rows = record["contenders"][::-1]  # matplotlib draws the first bar at the bottom
    figure = Figure(figsize=(9, 1.5 + 0.6 * len(rows)), layout="constrained")
    axes = figure.subplots()
    names = [f"{row['name']} ({row['precision']})" for row in rows]
    left = np.zeros(len(rows))
    for stage, label in PARTS.items():
        widths = np.array([max(row["stages"][stage]["median"], 0.0) for row in rows])
        axes.barh(names, widths, left=left, label=label)
        left += widths
    for y, row in enumerate(rows):
        axes.annotate(f" {row['stages']['total']['median']:.2f} s", (left[y], y), va="center")
    settings = record["settings"]
    axes.set_title(
        f"{settings['model']}: {settings['duration']:g} s, {settings['steps']} steps, batch {settings['batch']}",
        fontsize=10,
    )
    axes.set_xlabel(f"seconds, median of {settings['runs']} runs")
    axes.set_xlim(0, left.max() * 1.15)
    figure.legend(loc="outside lower center", ncols=len(PARTS), frameon=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(record: dict[str, Any], output: Path) -> dict[str, Path]:
    """Write the JSON, the markdown and the PNG into ``output``, each complete or not at all."""
    output.mkdir(parents=True, exist_ok=True)
    contents = {
        "json": json.dumps(record, indent=2).encode() + b"\n",
        "markdown": markdown(record).encode(),
        "chart": chart(record),
    }
    paths = {kind: output / FILE_NAMES[kind] for kind in contents}
    for kind, data in contents.items():
        write_atomically(paths[kind], data)
    return paths


def _or_dash(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)
