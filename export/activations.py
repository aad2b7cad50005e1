"""How much memory a graph's intermediate tensors take, for the runtime's memory estimate (engine/memory.py).

At export, each graph ONNX Runtime runs is analysed at one size: ONNX Runtime's symbolic shape inference gives
every tensor's shape (it resolves the shapes traced graphs compute, and knows MultiHeadAttention), and a walk
through the nodes in graph order, each tensor freed after its last use, gives the most bytes alive at once.
With attention computed without its score matrix, that grows linearly with the audio length, so the manifest
records it per batch item and latent row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..engine.manifest import ModelSpec
from .onnx import ExportError, GraphIO

#: Latent rows at which the activations are measured.
ANALYSIS_ROWS = 256


def activation_bytes_per_row(path: Path, io: GraphIO, model: ModelSpec) -> float:
    """Peak bytes of the intermediate tensors of the graph at ``path`` per batch item and latent row (0 for a
    graph whose sizes do not grow with the audio length: no height or mel-frame axis)."""
    axes = {dim for _, shape in io.inputs.values() for dim in shape if isinstance(dim, str)}
    if not axes & {"height", "frames"}:
        return 0.0
    sizes = {"batch": 1, "height": ANALYSIS_ROWS, "frames": ANALYSIS_ROWS * model.vae_scale_factor}
    return peak_activation_bytes(path, sizes) / ANALYSIS_ROWS


def peak_activation_bytes(path: Path, sizes: dict[str, int]) -> int:
    """The most bytes of node outputs alive at once when the graph at ``path`` runs its nodes in order, with its
    symbolic input axes set to ``sizes``."""
    shapes = _tensor_bytes(path, sizes)
    model = onnx.load(str(path), load_external_data=False)
    last_use = {name: index for index, node in enumerate(model.graph.node) for name in node.input}
    outputs = {value.name for value in model.graph.output}
    alive, peak = 0, 0
    for index, node in enumerate(model.graph.node):
        alive += sum(shapes[name] for name in node.output if name)
        peak = max(peak, alive)
        for name in set(node.input):
            if name in shapes and last_use[name] == index and name not in outputs:
                alive -= shapes[name]
    return peak


def _tensor_bytes(path: Path, sizes: dict[str, int]) -> dict[str, int]:
    """Bytes of every node output of the graph at ``path`` at ``sizes``."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path), load_external_data=False)
    # Shape inference needs only the weights' shapes: weights kept in a side file become inputs of their shape.
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        model.graph.initializer.remove(tensor)
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_value = sizes[dim.dim_param]
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    found = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if None in dims:
            raise ExportError(f"{path.name}: no static shape for {value.name} at {sizes}")
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        found[value.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    return found
