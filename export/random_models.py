"""Random-weight AudioLDM pipelines in the public checkpoints' layout.

The model hub is out of reach on the machines this project is built and tested on, so tests and benchmarks
run on pipelines made here: diffusers/transformers classes with random weights, written with
``save_pretrained`` and a locally trained byte-level BPE tokenizer saved the way the public checkpoints ship
theirs (``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` + ``special_tokens_map.json``).

Presets:
- ``s-full-v2``: the architecture of ``cvssp/audioldm-s-full-v2`` (configs copied from the checkpoint), so
  its component sizes, speed and memory are the real model's.
- ``tiny`` and ``tiny-deep``: two small models that differ in every dimension the runtime reads from the
  configs (depths, widths, latent channels, embedding size, mel bins, vocoder hop and sampling rate), for
  tests that must not pass by accident on one set of numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import ByteLevelBPETokenizer
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from .files import atomic_directory

# The scheduler diffusers' AudioLDM conversion script writes for every public checkpoint.
AUDIOLDM_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_S_FULL_V2: dict[str, Any] = {
    "unet": {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [128, 256, 384, 640],
        "center_input_sample": False,
        "class_embed_type": "simple_projection",
        "class_embeddings_concat": True,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": [128, 256, 384, 640],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 8,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 8,
        "projection_class_embeddings_input_dim": 512,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": False,
    },
    "vae": {
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "in_channels": 1,
        "latent_channels": 8,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 1,
        "sample_size": 512,
        "scaling_factor": 0.9392935633659363,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
    },
    # laion/clap-htsat-unfused's text tower: transformers' ClapTextConfig defaults.
    "text_encoder": {"projection_dim": 512},
    "vocoder": {
        "model_in_dim": 64,
        "sampling_rate": 16000,
        "upsample_initial_channel": 1024,
        "upsample_rates": [5, 4, 2, 2, 2],
        "upsample_kernel_sizes": [16, 16, 8, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "normalize_before": False,
    },
    "scheduler": AUDIOLDM_SCHEDULER,
    "tokenizer_vocab_size": 8000,
}


def _tiny_unet(widths: list[int], layers: int, channels: int, embed_dim: int, sample_size: int) -> dict[str, Any]:
    depth = len(widths)
    return {
        "sample_size": sample_size,
        "in_channels": channels,
        "out_channels": channels,
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (depth - 1),
        "up_block_types": ["CrossAttnUpBlock2D"] * (depth - 1) + ["UpBlock2D"],
        "block_out_channels": widths,
        "layers_per_block": layers,
        "cross_attention_dim": widths,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": embed_dim,
        "class_embeddings_concat": True,
    }


def _tiny_vae(widths: list[int], channels: int, scaling_factor: float) -> dict[str, Any]:
    return {
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "block_out_channels": widths,
        "layers_per_block": 1,
        "latent_channels": channels,
        "norm_num_groups": 8,
        "scaling_factor": scaling_factor,
    }


def _tiny_text_encoder(hidden: int, layers: int, heads: int, embed_dim: int, vocab: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 2 * hidden,
        "projection_dim": embed_dim,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "s-full-v2": _S_FULL_V2,
    # 3-level UNet (down-sampling 4), VAE factor 2, 4 latent channels, 16-dim embedding, 16 mel bins,
    # 16 kHz with a 160-sample hop like the real vocoder.
    "tiny": {
        "unet": _tiny_unet([16, 32, 32], layers=1, channels=4, embed_dim=16, sample_size=64),
        "vae": _tiny_vae([16, 32], channels=4, scaling_factor=0.73),
        "text_encoder": _tiny_text_encoder(32, layers=2, heads=2, embed_dim=16, vocab=1000),
        "vocoder": {
            "model_in_dim": 16,
            "sampling_rate": 16000,
            "upsample_initial_channel": 32,
            "upsample_rates": [8, 4, 5],
            "upsample_kernel_sizes": [16, 8, 10],
            "resblock_kernel_sizes": [3, 7],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
            "normalize_before": False,
        },
        "scheduler": AUDIOLDM_SCHEDULER,
        "tokenizer_vocab_size": 1000,
    },
    # 2-level UNet with two layers a block (down-sampling 2), VAE factor 4, 8 latent channels, 24-dim
    # embedding, 32 mel bins, 8 kHz with a 64-sample hop, a normalising vocoder.
    "tiny-deep": {
        "unet": _tiny_unet([24, 48], layers=2, channels=8, embed_dim=24, sample_size=16),
        "vae": _tiny_vae([8, 16, 16], channels=8, scaling_factor=1.21),
        "text_encoder": _tiny_text_encoder(24, layers=1, heads=3, embed_dim=24, vocab=800),
        "vocoder": {
            "model_in_dim": 32,
            "sampling_rate": 8000,
            "upsample_initial_channel": 24,
            "upsample_rates": [4, 4, 4],
            "upsample_kernel_sizes": [8, 8, 8],
            "resblock_kernel_sizes": [3, 5, 7],
            "resblock_dilation_sizes": [[1, 2], [1, 3], [1, 5]],
            "normalize_before": True,
        },
        "scheduler": AUDIOLDM_SCHEDULER,
        "tokenizer_vocab_size": 800,
    },
}

# A deterministic corpus for the tokenizer: words of the kind AudioLDM prompts use.
_CORPUS_WORDS = [
    "a",
    "the",
    "of",
    "and",
    "with",
    "in",
    "on",
    "at",
    "by",
    "from",
    "to",
    "for",
    "while",
    "as",
    "an",
    "is",
    "are",
    "was",
    "loud",
    "soft",
    "quiet",
    "distant",
    "close",
    "dog",
    "dogs",
    "barking",
    "bark",
    "cat",
    "meowing",
    "bird",
    "birds",
    "chirping",
    "singing",
    "rain",
    "raining",
    "thunder",
    "storm",
    "wind",
    "blowing",
    "ocean",
    "waves",
    "crashing",
    "water",
    "running",
    "stream",
    "river",
    "car",
    "engine",
    "revving",
    "horn",
    "siren",
    "train",
    "passing",
    "footsteps",
    "walking",
    "running",
    "door",
    "closing",
    "knocking",
    "glass",
    "breaking",
    "piano",
    "guitar",
    "drums",
    "violin",
    "music",
    "techno",
    "jazz",
    "rock",
    "classical",
    "upbeat",
    "tempo",
    "melodic",
    "riffs",
    "strong",
    "high",
    "low",
    "bass",
    "beat",
    "ambient",
    "crowd",
    "cheering",
    "applause",
    "people",
    "talking",
    "man",
    "woman",
    "child",
    "speaking",
    "laughing",
    "crying",
    "baby",
    "bell",
    "ringing",
    "clock",
    "ticking",
    "fire",
    "crackling",
    "keyboard",
    "typing",
    "phone",
    "vibrating",
    "helicopter",
    "airplane",
    "flying",
    "motorcycle",
    "background",
    "noise",
    "sound",
    "effect",
    "recording",
    "studio",
    "quality",
    "hifi",
    "synthesizer",
    "orchestra",
    "choir",
    "whistle",
]


def _corpus() -> list[str]:
    lines = []
    for i, word in enumerate(_CORPUS_WORDS):
        nxt = _CORPUS_WORDS[(i * 7 + 3) % len(_CORPUS_WORDS)]
        third = _CORPUS_WORDS[(i * 13 + 5) % len(_CORPUS_WORDS)]
        lines += [f"{word} {nxt} {third}", f"A {word}, {nxt}; {third}!", f"{word.capitalize()} {nxt}-{third}."]
    return lines * 4


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """Train a byte-level BPE on a fixed corpus and save it as the public AudioLDM checkpoints do."""
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(),
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    # Every byte must be in the vocabulary, as in RoBERTa's, so that no text maps to <unk>.
    missing = [c for c in ByteLevel.alphabet() if bpe.token_to_id(c) is None]
    if missing:
        raise RuntimeError(f"tokenizer vocabulary lacks {len(missing)} byte symbols")
    bpe.save_model(str(directory))
    config = {
        "add_prefix_space": False,
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "errors": "replace",
        "mask_token": "<mask>",
        "model_max_length": 512,
        "pad_token": "<pad>",
        "sep_token": "</s>",
        "tokenizer_class": "RobertaTokenizer",
        "trim_offsets": True,
        "unk_token": "<unk>",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {
        k: config[k]
        for k in ("bos_token", "cls_token", "eos_token", "mask_token", "pad_token", "sep_token", "unk_token")
    }
    special["mask_token"] = {
        "content": "<mask>",
        "lstrip": True,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


@torch.no_grad()
def _make_sensitive(unet: UNet2DConditionModel, vocoder: SpeechT5HifiGan) -> None:
    """Rescale default initialisations so that the audio depends strongly on prompt, guidance and latents.

    With the libraries' default random weights the waveform is ~1e-7 in amplitude (the vocoder's 0.01-std
    init) and changes by ~1% when the prompt changes (a weak conditioning path), which would let a parity
    test pass on a broken conditioning. Measured with these changes on the tiny presets: a different
    prompt or guidance scale moves the audio by 5-40% of its peak, far above the 2e-4 parity tolerance.
    """
    for parameter in unet.class_embedding.parameters():
        parameter.mul_(10.0)
    unet.conv_out.weight.mul_(5.0)
    unet.conv_out.bias.mul_(5.0)
    for module in vocoder.modules():
        if isinstance(module, torch.nn.Conv1d):
            fan_in = module.weight.shape[1] * module.weight.shape[2]
        elif isinstance(module, torch.nn.ConvTranspose1d):
            fan_in = module.weight.shape[0] * module.weight.shape[2] // module.stride[0]
        else:
            continue
        module.weight.normal_(0.0, fan_in**-0.5)
        module.bias.zero_()
    if vocoder.config.normalize_before:
        # Non-trivial statistics, small enough that the mel spectrogram still drives the waveform.
        vocoder.mean.copy_(torch.linspace(-0.1, 0.1, vocoder.mean.numel()))
        vocoder.scale.copy_(torch.linspace(0.8, 1.25, vocoder.scale.numel()))


def build_random_pipeline(preset: str, seed: int = 0) -> AudioLDMPipeline:
    """An ``AudioLDMPipeline`` of the preset's architecture with weights drawn from ``seed``."""
    spec = PRESETS[preset]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec["unet"])
    vae = AutoencoderKL(**spec["vae"])
    text_encoder = ClapTextModelWithProjection(ClapTextConfig(**spec["text_encoder"]))
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**spec["vocoder"]))
    _make_sensitive(unet, vocoder)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), spec["tokenizer_vocab_size"])
        tokenizer = RobertaTokenizer.from_pretrained(tmp)
    pipe = AudioLDMPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**spec["scheduler"]),
        vocoder=vocoder.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_random_model(preset: str, output: str | os.PathLike[str], seed: int = 0, force: bool = False) -> Path:
    """Write a diffusers-format AudioLDM directory with random weights, all of it or nothing."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    output = Path(output)
    with atomic_directory(output, force) as work:
        build_random_pipeline(preset, seed).save_pretrained(work, safe_serialization=True)
        shutil.rmtree(work / "tokenizer")
        write_tokenizer(work / "tokenizer", PRESETS[preset]["tokenizer_vocab_size"])
    return output
