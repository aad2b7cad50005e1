"""The four AudioLDM networks as ONNX graphs with dynamic axes, each checked against PyTorch after export.

One function per component. Every graph is traced at one shape and then run with ONNX Runtime at another
(another batch, another length) and compared with the PyTorch module, so a trace that baked a shape into
the graph fails the export, naming the graph, instead of giving wrong audio later.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from onnx import external_data_helper, numpy_helper
from transformers import ClapTextModelWithProjection, SpeechT5HifiGan

from ..engine.manifest import WEIGHTS_SUFFIX
from .attention import CONTRIB_DOMAIN, CONTRIB_OPSET, fused_attention

logger = logging.getLogger(__name__)

OPSET = 17
#: Relative max difference allowed between the fp32 graph and PyTorch at the verification shapes.
FP32_TOLERANCE = 1e-4
#: Tensors from this size up go to the weights file that graphs share; smaller ones stay in the graph, as in
#: ``save_graph`` (onnx's threshold).
SHARED_TENSOR_BYTES = 1024
#: Offsets of tensors in a shared weights file are multiples of the page size, so ONNX Runtime can map them.
SHARED_TENSOR_ALIGNMENT = 4096


class ExportError(RuntimeError):
    """An exported graph is wrong or could not be written."""


@dataclass(frozen=True)
class GraphIO:
    """Names and symbolic shapes of a graph's inputs and outputs, recorded in the manifest."""

    inputs: dict[str, tuple[str, list[int | str]]]
    outputs: dict[str, tuple[str, list[int | str]]]


class _TextEncoder(torch.nn.Module):
    """CLAP text tower + projection + the L2 normalisation diffusers applies after it."""

    def __init__(self, model: ClapTextModelWithProjection) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        return torch.nn.functional.normalize(embeds, dim=-1)


class _UNet(torch.nn.Module):
    """AudioLDM's call of the UNet: no cross-attention states, the text embedding as class labels."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=None, class_labels=class_labels, return_dict=False)[0]


class _VAEDecoder(torch.nn.Module):
    """Scaled latents to mel spectrogram; the runtime divides by the VAE scaling factor first."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class _VAEEncoder(torch.nn.Module):
    """Log-mel spectrogram to the VAE posterior: its mean and std side by side on the channel axis (one output,
    as every graph has), from which the runtime takes the mean or draws a sample as diffusers'
    ``latent_dist.sample(generator)`` does."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(mel).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1)


class _Vocoder(torch.nn.Module):
    """transformers' ``SpeechT5HifiGan.forward`` computed on (batch, channels, 1, time) tensors.

    Every 1-D convolution becomes a (1 x k) 2-D one with the same weights, so that ONNX Runtime's blocked
    NCHWc convolution kernels, which it uses only for 2-D convolutions, run the HiFi-GAN (about 15 % faster
    on CPU than its 1-D path). The export checks the graph against the original module."""

    def __init__(self, vocoder: SpeechT5HifiGan) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        vocoder, config = self.vocoder, self.vocoder.config
        if config.normalize_before:
            mel = (mel - vocoder.mean) / vocoder.scale
        hidden = _conv_2d(mel.transpose(2, 1).unsqueeze(2), vocoder.conv_pre)
        for i, upsampler in enumerate(vocoder.upsampler):
            hidden = _conv_2d(torch.nn.functional.leaky_relu(hidden, config.leaky_relu_slope), upsampler)
            first, *others = vocoder.resblocks[i * vocoder.num_kernels : (i + 1) * vocoder.num_kernels]
            total = _residual_block_2d(first, hidden)
            for block in others:
                total = total + _residual_block_2d(block, hidden)
            hidden = total / vocoder.num_kernels
        hidden = _conv_2d(torch.nn.functional.leaky_relu(hidden), vocoder.conv_post)
        return torch.tanh(hidden)[:, 0, 0]


def vocoder_context_frames(vocoder: SpeechT5HifiGan) -> int:
    """Mel frames on each side of a span that decide its waveform: the HiFi-GAN's receptive field, walked back
    from its last convolution (rounded up at every up-sampling), so that the engine can run the vocoder over
    windows of a spectrogram and join exactly the audio of the whole."""
    radius = _conv_radius(vocoder.conv_post)
    for i in reversed(range(len(vocoder.upsampler))):
        blocks = vocoder.resblocks[i * vocoder.num_kernels : (i + 1) * vocoder.num_kernels]
        radius += max(
            sum(_conv_radius(conv1) + _conv_radius(conv2) for conv1, conv2 in zip(b.convs1, b.convs2, strict=True))
            for b in blocks
        )
        upsampler = vocoder.upsampler[i]
        (kernel,), (stride,), (padding,), (dilation,) = (
            upsampler.kernel_size,
            upsampler.stride,
            upsampler.padding,
            upsampler.dilation,
        )
        reach = max(radius - padding + (kernel - 1) * dilation, radius + padding)
        radius = -(-reach // stride) + 1
    return radius + _conv_radius(vocoder.conv_pre)


def _conv_radius(conv: torch.nn.Conv1d) -> int:
    """Input samples on either side that one output of a stride-1 convolution reads."""
    (kernel,), (padding,), (dilation,) = conv.kernel_size, conv.padding, conv.dilation
    return max(padding, (kernel - 1) * dilation - padding)


def _residual_block_2d(block: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """transformers' ``HifiGanResidualBlock.forward`` on (batch, channels, 1, time)."""
    slope = block.leaky_relu_slope
    for conv1, conv2 in zip(block.convs1, block.convs2, strict=True):
        residual = hidden
        hidden = _conv_2d(torch.nn.functional.leaky_relu(hidden, slope), conv1)
        hidden = _conv_2d(torch.nn.functional.leaky_relu(hidden, slope), conv2) + residual
    return hidden


def _conv_2d(hidden: torch.Tensor, conv: torch.nn.Module) -> torch.Tensor:
    """A ``Conv1d`` or ``ConvTranspose1d`` applied as the (1 x k) 2-D convolution it equals."""
    if not isinstance(conv, torch.nn.Conv1d | torch.nn.ConvTranspose1d) or conv.groups != 1:
        raise ExportError(f"vocoder: unexpected layer {conv!r}")
    weight, (stride,), (padding,), (dilation,) = conv.weight.unsqueeze(2), conv.stride, conv.padding, conv.dilation
    if isinstance(conv, torch.nn.ConvTranspose1d):
        (output_padding,) = conv.output_padding
        return torch.nn.functional.conv_transpose2d(
            hidden, weight, conv.bias, (1, stride), (0, padding), (0, output_padding), dilation=(1, dilation)
        )
    return torch.nn.functional.conv2d(hidden, weight, conv.bias, (1, stride), (0, padding), (1, dilation))


class _OriginalVocoder(torch.nn.Module):
    """The vocoder as transformers runs it: what the exported graph is checked against."""

    def __init__(self, vocoder: SpeechT5HifiGan) -> None:
        super().__init__()
        self.vocoder = vocoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vocoder(mel)


def export_text_encoder(model: ClapTextModelWithProjection, path: Path) -> GraphIO:
    """input_ids, attention_mask (batch, tokens) -> L2-normalised text_embeds (batch, D).

    Traced with eager attention and a padded row, so that masking is in the graph for every input."""
    model.set_attn_implementation("eager")
    module = _TextEncoder(model).eval()
    io = GraphIO(
        inputs={"input_ids": ("int64", ["batch", "tokens"]), "attention_mask": ("int64", ["batch", "tokens"])},
        outputs={"text_embeds": ("float32", ["batch", model.config.projection_dim])},
    )
    vocab = model.config.vocab_size
    _export(module, _token_inputs(batch=2, tokens=9, vocab=vocab), path, io)
    _verify(module, path, "text_encoder", _token_inputs(batch=3, tokens=14, vocab=vocab), io)
    _verify(module, path, "text_encoder", _token_inputs(batch=1, tokens=5, vocab=vocab, padded=False), io)
    return io


def _token_inputs(batch: int, tokens: int, vocab: int, padded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(tokens)
    ids = torch.randint(3, vocab, (batch, tokens), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    if padded:  # the last row is padded after its end-of-text token, as the tokenizer pads
        keep = tokens // 2
        ids[-1, keep - 1], ids[-1, keep:], mask[-1, keep:] = 2, 1, 0
    return ids, mask


def export_unet(
    unet: UNet2DConditionModel, path: Path, latent_width: int, embedding_dim: int, fused: bool = False
) -> GraphIO:
    """sample (batch, C, H, W), timestep (batch,), class_labels (batch, D) -> noise prediction; ``fused``: the
    attention as MultiHeadAttention (``attention.py``), checked against diffusers' own attention.

    diffusers up-samples to the skip connection's size only when H or W is not a multiple of the UNet's
    total down-sampling, a Python branch a trace freezes. Tracing at such a height puts the general form
    (sizes read from the skip tensors) into the graph, which is exact for every height."""
    channels = unet.config.in_channels
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    io = GraphIO(
        inputs={
            "sample": ("float32", ["batch", channels, "height", latent_width]),
            "timestep": ("float32", ["batch"]),
            "class_labels": ("float32", ["batch", embedding_dim]),
        },
        outputs={"noise_pred": ("float32", ["batch", unet.config.out_channels, "height", latent_width])},
    )
    module = _UNet(unet).eval()

    def inputs(batch: int, height: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(height)
        return (
            torch.randn(batch, channels, height, latent_width, generator=generator),
            torch.full((batch,), 301.0),
            torch.nn.functional.normalize(torch.randn(batch, embedding_dim, generator=generator), dim=-1),
        )

    _export(module, inputs(2, 3 * factor + 1), path, io, fused)
    _verify(module, path, "unet", inputs(3, 2 * factor), io)
    _verify(module, path, "unet", inputs(1, 5 * factor - 3), io)
    return io


def export_vae_decoder(vae: AutoencoderKL, path: Path, latent_width: int, fused: bool = False) -> GraphIO:
    """latents (batch, C, H, W), already divided by the scaling factor -> mel (batch, 1, H*f, W*f); ``fused`` as
    for the UNet."""
    channels = vae.config.latent_channels
    io = GraphIO(
        inputs={"latents": ("float32", ["batch", channels, "height", latent_width])},
        outputs={"mel": ("float32", ["batch", 1, "mel_frames", "mel_bins"])},
    )
    module = _VAEDecoder(vae).eval()

    def inputs(batch: int, height: int) -> tuple[torch.Tensor]:
        return (torch.randn(batch, channels, height, latent_width, generator=torch.Generator().manual_seed(height)),)

    _export(module, inputs(1, 13), path, io, fused)
    _verify(module, path, "vae_decoder", inputs(2, 20), io)
    return io


def export_vae_encoder(vae: AutoencoderKL, path: Path, mel_bins: int, factor: int, fused: bool = False) -> GraphIO:
    """mel (batch, 1, frames, bins), frames a multiple of the VAE factor -> posterior (batch, 2C, H, W): mean
    then std; ``fused`` as for the UNet."""
    channels = vae.config.latent_channels
    io = GraphIO(
        inputs={"mel": ("float32", ["batch", 1, "frames", mel_bins])},
        outputs={"posterior": ("float32", ["batch", 2 * channels, "height", mel_bins // factor])},
    )
    module = _VAEEncoder(vae).eval()

    def inputs(batch: int, height: int) -> tuple[torch.Tensor]:
        generator = torch.Generator().manual_seed(height)
        return (torch.randn(batch, 1, height * factor, mel_bins, generator=generator) * 2.0 - 5.0,)

    _export(module, inputs(1, 13), path, io, fused)
    _verify(module, path, "vae_encoder", inputs(2, 20), io)
    _verify(module, path, "vae_encoder", inputs(1, 3), io)
    return io


def export_vocoder(vocoder: SpeechT5HifiGan, path: Path) -> GraphIO:
    """mel (batch, frames, bins) -> waveform (batch, samples)."""
    bins = vocoder.config.model_in_dim
    io = GraphIO(
        inputs={"mel": ("float32", ["batch", "frames", bins])},
        outputs={"waveform": ("float32", ["batch", "samples"])},
    )
    original = _OriginalVocoder(vocoder).eval()

    def inputs(batch: int, frames: int) -> tuple[torch.Tensor]:
        return (torch.randn(batch, frames, bins, generator=torch.Generator().manual_seed(frames)),)

    _export(_Vocoder(vocoder).eval(), inputs(1, 23), path, io)
    _verify(original, path, "vocoder", inputs(2, 40), io)
    _verify(original, path, "vocoder", inputs(1, 7), io)
    return io


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """The tracer warns about every Python-level shape use; the verification step is what checks them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        yield


def _export(
    module: torch.nn.Module, args: Sequence[torch.Tensor], path: Path, io: GraphIO, fused: bool = False
) -> None:
    """Trace ``module`` to ``path`` with the symbolic axes of ``io``, its weights in a file of their own;
    ``fused``: with its attention layers traced as MultiHeadAttention."""
    dynamic_axes = {
        name: {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}
        for name, (_, shape) in {**io.inputs, **io.outputs}.items()
    }
    tracing = fused_attention(module) if fused else contextlib.nullcontext()
    with torch.no_grad(), _quiet_tracing(), tracing:
        torch.onnx.export(
            module,
            tuple(args),
            str(path),
            dynamo=False,
            input_names=list(io.inputs),
            output_names=list(io.outputs),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            custom_opsets={CONTRIB_DOMAIN: CONTRIB_OPSET} if fused else None,
        )
    save_graph(onnx.load(str(path)), path)


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """The graph in ``path``, its weights in ``<name>.data`` beside it (tensors of 1 KiB and more; shapes and
    other small constants stay in the graph).

    ONNX Runtime maps a weights file into memory instead of parsing the weights out of the graph and copying
    them, which makes its sessions much faster to create and lighter while they are created (figures in
    benchmarks/README.md); and protobuf could not hold the weights of a graph over 2 GB anyway."""
    data = path.with_name(path.name + WEIGHTS_SUFFIX)
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    data.chmod(stat.S_IMODE(path.stat().st_mode))  # onnx makes it private: the graph's mode, from the umask


def share_weights(graph: Path, others: Sequence[Path]) -> None:
    """Move the weights of ``graph`` and of ``others`` (other forms of the same network, which hold the same
    weights under names that differ from trace to trace) into ``graph``'s weights file, each distinct tensor
    once; the weights files of ``others`` go. The manifest's identity of ``graph`` (its files' digests, which
    TensorRT engine records keep) thereby covers the weights of every form."""
    paths = [graph, *others]
    models = [onnx.load(str(path)) for path in paths]  # reads the weights into memory: their files can go
    for path in paths:
        path.with_name(path.name + WEIGHTS_SUFFIX).unlink(missing_ok=True)
    data = graph.with_name(graph.name + WEIGHTS_SUFFIX)
    offsets: dict[tuple[int, tuple[int, ...], bytes], int] = {}
    with open(data, "wb") as stream:
        for model in models:
            for tensor in model.graph.initializer:
                if not tensor.HasField("raw_data"):
                    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
                raw = tensor.raw_data
                if len(raw) < SHARED_TENSOR_BYTES:
                    continue
                key = (tensor.data_type, tuple(tensor.dims), raw)
                if key not in offsets:
                    stream.write(b"\0" * (-stream.tell() % SHARED_TENSOR_ALIGNMENT))
                    offsets[key] = stream.tell()
                    stream.write(raw)
                external_data_helper.set_external_data(tensor, data.name, offsets[key], len(raw))
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
    for path, model in zip(paths, models, strict=True):
        onnx.save_model(model, str(path))
    data.chmod(stat.S_IMODE(graph.stat().st_mode))


def _verify(module: torch.nn.Module, path: Path, name: str, args: Sequence[torch.Tensor], io: GraphIO) -> None:
    """Fail the export if ONNX Runtime's output at ``args`` differs from PyTorch's beyond the tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(io.inputs, args, strict=True)}
    if "timestep" in feeds:
        feeds["timestep"] = feeds["timestep"].astype(np.float32)
    (actual,) = session.run(None, feeds)
    with torch.no_grad():
        expected = module(*args).numpy()
    error = relative_max_difference(actual, expected)
    shape = "x".join(str(d) for d in args[0].shape)
    if actual.shape != expected.shape or not error < FP32_TOLERANCE:
        raise ExportError(
            f"{name}: the ONNX graph differs from PyTorch at input shape {shape}"
            f" (relative max difference {error:.2e}, shapes {actual.shape} vs {expected.shape})"
        )
    logger.info("%s verified at input shape %s: relative max difference %.2e", name, shape, error)


def relative_max_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|actual - expected| / max|expected|: the measure every parity check of this project uses."""
    if actual.shape != expected.shape:
        return float("inf")
    scale = float(np.abs(expected).max())
    return float(np.abs(actual.astype(np.float64) - expected).max() / (scale if scale > 0 else 1.0))
