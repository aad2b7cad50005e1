"""Attention as ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``, for the graphs ONNX Runtime runs.

torch's exporter writes scaled-dot-product attention as MatMul, Softmax, MatMul: the (tokens x tokens) score
matrix is a tensor of the graph, which ONNX Runtime allocates, so memory grows with the square of the audio
length (the VAE decoder's mid-block attends over every latent pixel, the UNet's blocks over every pixel of
their level). ONNX Runtime's MultiHeadAttention computes the same attention without that matrix: on CPU, for
fp32 without mask, bias or past state, it runs MLAS's flash attention (blocks of queries and keys sized to
the L2 cache, a running softmax), on CUDA its flash or memory-efficient kernels. fp16 nodes run on CPU
through the fp32 kernel, as the other fp16 nodes do.

TensorRT's ONNX parser knows no com.microsoft operator, and TensorRT fuses the standard pattern into its own
fused attention kernels; so a network with attention is exported twice, each form checked against PyTorch:
the standard form (the manifest's ``file``, which TensorRT builds from and the lint checks) and the fused form
(``onnxruntime_file``), which share one weights file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

#: The contrib operator set the fused form imports.
CONTRIB_DOMAIN = "com.microsoft"
CONTRIB_OPSET = 1


class _MultiHeadAttention(torch.autograd.Function):
    """Attention of (batch, tokens, heads * head_dim) projections: torch's SDPA when run, one MultiHeadAttention
    node when traced (its default scale is SDPA's, 1/sqrt(head_dim))."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
        def split(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (heads, -1)).transpose(1, 2)

        hidden = torch.nn.functional.scaled_dot_product_attention(split(query), split(key), split(value))
        return hidden.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g: Any, query: Any, key: Any, value: Any, heads: int) -> Any:
        output = g.op(f"{CONTRIB_DOMAIN}::MultiHeadAttention", query, key, value, num_heads_i=heads)
        output.setType(query.type())
        return output


class FusedAttentionProcessor:
    """diffusers' ``AttnProcessor2_0`` for the attention AudioLDM's UNet and VAE use (self-attention, no mask,
    no spatial or query/key norms), its core as ``_MultiHeadAttention``."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        unsupported = {
            "an attention mask": attention_mask is not None,
            "cross-attention states": encoder_hidden_states is not None,
            "a spatial norm": attn.spatial_norm is not None,
            "query/key norms": attn.norm_q is not None or attn.norm_k is not None,
        }
        found = [what for what, present in unsupported.items() if present]
        if found:
            raise NotImplementedError(f"the fused attention export does not handle {found[0]}")
        residual = hidden_states
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        hidden_states = _MultiHeadAttention.apply(query, key, value, attn.heads)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if image_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def has_attention(model: torch.nn.Module) -> bool:
    """Whether ``model`` has diffusers attention layers, whose export differs in the fused form."""
    return any(isinstance(layer, Attention) for layer in model.modules())


@contextlib.contextmanager
def fused_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every diffusers attention layer of ``model`` runs ``FusedAttentionProcessor``."""
    layers = [layer for layer in model.modules() if isinstance(layer, Attention)]
    original = [layer.processor for layer in layers]
    for layer in layers:
        layer.set_processor(FusedAttentionProcessor())
    try:
        yield
    finally:
        for layer, processor in zip(layers, original, strict=True):
            layer.set_processor(processor)
