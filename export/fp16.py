"""Mixed-precision graphs for ``--precision fp16``: fp16 weights and compute, fp32 where fp16 breaks.

TensorRT 11 builds networks strongly typed only (``BuilderFlag.FP16`` is gone), and TensorRT 10 does with the
STRONGLY_TYPED flag, so the precision of every tensor is decided here, in the ONNX graph. The conversion is
ONNX Runtime's ``onnxruntime.transformers.float16`` (it ships with onnxruntime, which the export already
needs; onnxconverter-common's converter, which it descends from, leaves torch's ``Cast(to=float)`` nodes
unconverted and its graphs fail to load; NVIDIA ModelOpt's AutoCast needs onnxruntime-gpu and cupy). Inputs
and outputs stay fp32, so the runtime is the same for both precisions.

What stays fp32, and why (measured on the ``tiny`` and ``tiny-deep`` random models in a 10-step, guidance
2.5, 1 s generation of two prompts, with every node output recorded in the fp32 graphs):

- Normalisations (LayerNormalization, InstanceNormalization that GroupNorm exports to, GroupNormalization,
  BatchNormalization, and the ReduceMean/Pow/ReduceL2 of decomposed ones): the sums of squares they reduce
  reach 2.5e6 in the UNet and 1.7e6 in the VAE decoder, far past fp16's 65504 (TensorRT's builder warns
  likewise: "Running layernorm after self-attention in FP16 may cause overflow").
- Softmax: the text encoder's attention mask is float32's minimum (-3.4e38), which saturates in fp16; exp and
  its sum stay in fp32.
- The UNet's timestep embedding, every node from the ``timestep`` input to its Sin/Cos: the phases reach 901,
  where an fp16 step is 0.5 rad, which would scramble the sinusoids (diffusers computes them in fp32 too).
- The vocoder's output layers (the Conv feeding the final Tanh, and the Tanh): in fp16 the waveform would be
  quantised to 2.4e-4 at |x| in [0.25, 0.5), 8x coarser than the 16-bit PCM it is written as.

Measured errors (relative max difference against the fp32 graph on ONNX Runtime CPU, same inputs): per graph
at export 2.8e-4 (text encoder), 1.3e-3 (UNet), 1.5e-3 and 2.5e-3 (VAE decoder), 9.5e-4 and 1.4e-3 (vocoder);
the audio of whole generations (10 steps, guidance 1, 2.5 and 4, 0.6 to 2.3 s) 1.4e-3 to 7.7e-3. What this
measures, honestly: ONNX Runtime's CPU provider runs fp16 nodes as fp32 kernels and removes the casts around
them, the graph's own included (x * 1e5 in an fp16 graph comes out as 2e5, not infinity), so it sees the fp16
rounding of the weights but neither fp16 arithmetic nor fp16 rounding or overflow of activations. Those only
show on a GPU, where the runtime refuses NaN or infinity from any stage (NonFiniteOutputError, naming
the stage and ``--fp32 <graph>``), and where tests/gpu compares TensorRT's audio with the CPU's fp32 audio.
The export fails, naming the graph, if a converted graph is not finite or differs from its fp32 version by
more than FP16_TOLERANCE on the inputs of ``_verification_feeds``; ``--fp32 GRAPH`` keeps a graph fp32.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from .onnx import SHARED_TENSOR_BYTES, ExportError, relative_max_difference, save_graph

logger = logging.getLogger(__name__)

#: Relative max difference allowed between a graph's fp16 and fp32 versions on ONNX Runtime CPU: 4x the
#: largest measured (2.5e-3), loose enough for other weights, tight enough to catch a broken conversion.
FP16_TOLERANCE = 1e-2

#: Op types that stay fp32 in every graph (see the module docstring).
KEEP_FP32_OPS = (
    "BatchNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "Pow",
    "ReduceL2",
    "ReduceMean",
    "ReduceSumSquare",
    "Softmax",
)

#: Sizes of the symbolic dimensions of the export's graphs for the check at export.
_CHECK_DIMENSIONS = {"batch": 2, "tokens": 9, "height": 13, "frames": 48}


def convert_to_fp16(path: Path, name: str) -> None:
    """Replace the fp32 graph ``name`` at ``path`` by its mixed-precision version, checked against it on ONNX
    Runtime CPU; ExportError naming the graph if the fp16 graph is not finite or not within FP16_TOLERANCE."""
    fp32 = onnx.load(str(path))
    feeds = _verification_feeds(fp32)
    (expected,) = _run(path, feeds)
    save_graph(mixed_precision(fp32), path)
    (actual,) = _run(path, feeds)
    if not np.isfinite(actual).all():
        raise ExportError(f"{name}: the fp16 graph produces NaN or infinity; export with --fp32 {name}")
    error = relative_max_difference(actual, expected)
    if not error < FP16_TOLERANCE:
        raise ExportError(
            f"{name}: the fp16 graph differs from the fp32 graph by {error:.2e} (relative max difference, allowed"
            f" {FP16_TOLERANCE:.0e}); export with --fp32 {name}"
        )
    logger.info("%s converted to fp16: relative max difference %.2e against fp32", name, error)


def mixed_precision(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 ``model`` with fp32 inputs and outputs and the fp32 islands described above."""
    model = _with_node_names(model)
    _infer_types(model)
    keep = _timestep_embedding(model.graph) | _waveform_output(model.graph)
    converted: onnx.ModelProto = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(KEEP_FP32_OPS),
        node_block_list=sorted(keep),
        disable_shape_infer=True,
    )
    _drop_repeated_nodes(converted.graph)
    _sort_topologically(converted.graph)
    return converted


def _infer_types(model: onnx.ModelProto) -> None:
    """Give ``model`` the value infos ONNX's shape inference gives it, as the converter would infer them itself,
    but inferred on a copy without the weights: inference serialises the model it is given, and the weights are
    nearly all of a network's bytes (benchmarks/README.md has what it saves). Tensors under
    SHARED_TENSOR_BYTES (shapes and other constants that inference reads) stay in the copy."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:
        if len(tensor.raw_data) >= SHARED_TENSOR_BYTES:
            tensor.ClearField("raw_data")
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for output, typed in zip(model.graph.output, inferred.graph.output, strict=True):
        output.CopyFrom(typed)


def _drop_repeated_nodes(graph: onnx.GraphProto) -> None:
    """Keep the first of nodes that are the same node (operator, inputs, outputs, attributes) and of value
    infos of one name. ONNX Runtime's converter before 1.32 puts one Cast after a tensor for each kept node
    that reads it, all writing the same tensor, which ONNX Runtime then refuses to load."""
    _keep_first(graph.node, _without_name)
    _keep_first(graph.value_info, lambda info: info.name)


def _keep_first(field: Any, key: Callable[[Any], object]) -> None:
    seen: set[object] = set()
    kept = []
    for item in field:
        if (identity := key(item)) not in seen:
            seen.add(identity)
            kept.append(item)
    del field[:]
    field.extend(kept)


def _without_name(node: onnx.NodeProto) -> bytes:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.ClearField("name")
    return copy.SerializeToString(deterministic=True)


def _with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names: the converter keeps nodes fp32 by name."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: set[str] = set()
    for index, node in enumerate(copy.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}_fp16"
        seen.add(node.name)
    return copy


def _timestep_embedding(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes that compute the inputs of Sin and Cos, back to the graph inputs (shape queries
    excluded: they read no values)."""
    producer = {output: node for node in graph.node for output in node.output}
    pending = [name for node in graph.node if node.op_type in ("Sin", "Cos") for name in node.input]
    found: set[str] = {node.name for node in graph.node if node.op_type in ("Sin", "Cos")}
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in found or node.op_type in ("Shape", "Size"):
            continue
        found.add(node.name)
        pending.extend(node.input)
    return found


def _waveform_output(graph: onnx.GraphProto) -> set[str]:
    """Names of the final Tanh nodes and of the Conv feeding each."""
    producer = {output: node for node in graph.node for output in node.output}
    found: set[str] = set()
    for node in graph.node:
        if node.op_type == "Tanh":
            found.add(node.name)
            source = producer.get(node.input[0])
            if source is not None and source.op_type == "Conv":
                found.add(source.name)
    return found


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder the nodes so that each comes after the producers of its inputs (the converter appends its
    Cast nodes at the end; ONNX requires this order), keeping the original order where it is free."""
    nodes = list(graph.node)
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    waiting = [{producer[name] for name in node.input if name in producer} for node in nodes]
    consumers: list[list[int]] = [[] for _ in nodes]
    for index, inputs in enumerate(waiting):
        for source in inputs:
            consumers[source].append(index)
    ready = [index for index, inputs in enumerate(waiting) if not inputs]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers[index]:
            waiting[consumer].discard(index)
            if not waiting[consumer]:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise ExportError(f"graph {graph.name} has a cycle after fp16 conversion")
    graph.ClearField("node")
    graph.node.extend(nodes[index] for index in order)


def _verification_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs in the ranges the pipeline feeds: token ids of the vocabulary with a padded row, timesteps across
    the schedule, unit-length embeddings, unit-variance latents and mels."""
    generator = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else _CHECK_DIMENSIONS[d.dim_param] for d in dims)
        if value.name == "input_ids":
            feeds[value.name] = generator.integers(0, _vocabulary_size(model.graph), shape, dtype=np.int64)
        elif value.name == "attention_mask":
            mask = np.ones(shape, dtype=np.int64)
            mask[-1, shape[1] // 2 :] = 0
            feeds[value.name] = mask
        elif value.name == "timestep":
            feeds[value.name] = np.linspace(981, 1, shape[0], dtype=np.float32)
        else:
            array = generator.standard_normal(shape, dtype=np.float32)
            if value.name == "class_labels":
                array /= np.linalg.norm(array, axis=-1, keepdims=True)
            feeds[value.name] = array
    return feeds


def _vocabulary_size(graph: onnx.GraphProto) -> int:
    """Rows of the embedding table that ``input_ids`` index."""
    tables = {tensor.name: tensor.dims[0] for tensor in graph.initializer if tensor.dims}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[1] == "input_ids" and node.input[0] in tables:
            return int(tables[node.input[0]])
    raise ExportError("text_encoder: no embedding table is indexed by input_ids")


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))
