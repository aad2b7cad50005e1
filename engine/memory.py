"""How much memory a generation needs, estimated from the export's manifest, and whether it fits here.

For ONNX Runtime on the CPU, where weights and activations share the host's memory, loading an export and
generating ``batch`` waveforms of ``latent_height`` latent rows needs about

    RUNTIME_BYTES + WEIGHTS_FACTOR x (bytes of the export's files)
        + ACTIVATIONS_FACTOR x max over the graphs of (activation bytes per batch item and row x batch x rows)
        + the arrays the generation holds in numpy (latents, noise predictions, waveforms)

The activation bytes of each graph are measured at export (the manifest's ``activation_bytes_per_row``: the
most bytes of intermediate tensors alive at once, which grows linearly with the rows since the graphs ONNX
Runtime runs compute attention without the score matrix). The graphs run one after another and ONNX Runtime
hands a run's memory back when it ends, so the largest stage is the one that counts; the UNet's batch doubles
with classifier-free guidance. The three constants are calibrated on peak-RSS measurements and round them up
(the memory benchmark; its command and figures are in benchmarks/README.md) on ONNX Runtime, whose graphs
the activations are measured in; OpenVINO, which runs the standard graphs, is checked by the same estimate. On
a GPU backend only the numpy arrays live in host memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from .manifest import Manifest

#: The interpreter, numpy, tokenizers and ONNX Runtime's libraries.
RUNTIME_BYTES = 200 << 20
#: Resident bytes per byte of the export's files once the sessions are created (optimised graphs, weights
#: reordered for the blocked convolution kernels).
WEIGHTS_FACTOR = 1.25
#: Resident bytes per byte of a stage's activations as the graph analysis counts them (ONNX Runtime's layout
#: changes, kernel buffers and allocator slack come on top).
ACTIVATIONS_FACTOR = 2.0
_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")
_GIB = 1 << 30


def host_array_bytes(manifest: Manifest, batch: int, latent_height: int, guided: bool) -> int:
    """Bytes of the arrays a generation holds in this process whatever runs its graphs: the latents and the
    UNet's output for each of its rows, and the waveforms."""
    model = manifest.model
    unet_rows = batch * (2 if guided else 1)
    latents = unet_rows * model.latent_channels * latent_height * model.latent_width
    samples = batch * latent_height * model.vae_scale_factor * model.hop_length
    return 4 * (2 * latents + samples)


def estimate_peak_bytes(manifest: Manifest, batch: int, latent_height: int, guided: bool) -> int:
    """Estimated peak resident memory of loading the export and generating ``batch`` waveforms of
    ``latent_height`` latent rows on ONNX Runtime CPU (``guided``: with classifier-free guidance)."""
    weights = sum(record.bytes for record in manifest.files.values())
    activations = max(
        spec.activation_bytes_per_row * batch * (2 if guided and name == "unet" else 1) * latent_height
        for name, spec in manifest.graphs.items()
    )
    return int(
        RUNTIME_BYTES
        + WEIGHTS_FACTOR * weights
        + ACTIVATIONS_FACTOR * activations
        + host_array_bytes(manifest, batch, latent_height, guided)
    )


def physical_memory_bytes() -> int:
    """This machine's memory, or the cgroup's limit where a container has a lower one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = _CGROUP_LIMIT.read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def check_fits(manifest: Manifest, batch: int, latent_height: int, guided: bool, graphs_on_host: bool) -> None:
    """ValueError naming the request and the memory it needs against this machine's, when ``batch`` waveforms of
    ``latent_height`` latent rows cannot be generated in this machine's memory.

    ``graphs_on_host``: the graphs compute in this process's memory (ONNX Runtime CPU), so the whole estimate
    must fit. A GPU backend holds weights and activations on the device, where TensorRT's profiles bound the
    shapes: here only the arrays the generation keeps on the host count."""
    if graphs_on_host:
        needed = estimate_peak_bytes(manifest, batch, latent_height, guided)
    else:
        needed = host_array_bytes(manifest, batch, latent_height, guided)
    available = physical_memory_bytes()
    if needed > available:
        model = manifest.model
        seconds = latent_height * model.vae_scale_factor * model.seconds_per_frame
        waveforms = "1 waveform" if batch == 1 else f"{batch} waveforms"
        raise ValueError(
            f"generating {waveforms} of {seconds:g} s of audio needs about {needed / _GIB:,.1f} GiB of memory,"
            f" this machine has {available / _GIB:,.1f} GiB: ask for shorter audio or fewer waveforms"
        )
