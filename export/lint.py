"""Does TensorRT's ONNX parser support every operator and data type an export uses? Checked before a build.

The supported set is ``tensorrt_onnx_support.json`` beside this file: the operator tables of onnx-tensorrt's
``docs/operators.md`` for TensorRT 10.0 and 11.1, intersected, with two documented corrections; its "about"
and "sources" say where each part comes from and how to update it.

Per graph this collects the operators (with their domain and the opset), the data type each operator works
on and every tensor's type, then reports what the set lacks. An operator's data type is that of its data
input: the first input, except Constant and ConstantOfShape (their output), Where (input 1; input 0 is the
condition) and Cast/CastLike (both the input and the output).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..engine.manifest import Manifest

SUPPORT_FILE = Path(__file__).with_name("tensorrt_onnx_support.json")
_STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class SupportedSet:
    """What TensorRT's ONNX parser takes: an opset range, tensor types, and the types of each operator."""

    opset: tuple[int, int]
    tensor_types: frozenset[str]
    operators: dict[str, frozenset[str]]

    @classmethod
    def load(cls, path: Path = SUPPORT_FILE) -> SupportedSet:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = data["type_names"]
        operators = {op: {names[t] for t in types} for op, types in data["operators"].items()}
        for op, correction in data["corrections"].items():
            operators[op] |= {names[t] for t in correction["add"]}
        return cls(
            (data["opset"]["min"], data["opset"]["max"]),
            frozenset(data["tensor_types"]),
            {op: frozenset(types) for op, types in operators.items()},
        )


@dataclass
class GraphUsage:
    """What one graph uses: opset per domain, the data types of each (domain, operator), tensor types."""

    opsets: dict[str, int]
    operators: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)


def graph_usage(model: onnx.ModelProto) -> GraphUsage:
    """Operators, their data types and the tensor types of ``model`` (after ONNX shape inference, where it works:
    it does not know non-standard operators, whose outputs then stay untyped)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        inferred = model
    usage = GraphUsage({opset.domain or "ai.onnx": opset.version for opset in inferred.opset_import})
    types = _tensor_types(inferred.graph)
    usage.tensor_types = types
    for node in _nodes(inferred.graph):
        domain = node.domain or "ai.onnx"
        usage.operators.setdefault((domain, node.op_type), set()).update(
            types[name] for name in _data_tensors(node) if name in types
        )
    return usage


def lint_model(model: onnx.ModelProto, supported: SupportedSet) -> list[str]:
    """One line per operator, data type or opset of ``model`` that TensorRT's ONNX parser does not support."""
    usage = graph_usage(model)
    problems = []
    low, high = supported.opset
    opset = usage.opsets.get("ai.onnx")
    if opset is not None and not low <= opset <= high:
        problems.append(f"opset {opset} is outside the {low}-{high} that TensorRT 10 and 11 both import")
    for (domain, op), used in sorted(usage.operators.items()):
        if domain not in _STANDARD_DOMAINS:
            problems.append(f"operator {domain}.{op} is not a standard ONNX operator")
        elif op not in supported.operators:
            problems.append(f"operator {op} is not supported")
        elif used - supported.operators[op]:
            problems.append(
                f"operator {op} on {', '.join(sorted(used - supported.operators[op]))} is not supported"
                f" (it takes {', '.join(sorted(supported.operators[op]))})"
            )
    unknown = sorted({t for t in usage.tensor_types.values() if t not in supported.tensor_types})
    problems += [f"tensor type {t} is not supported" for t in unknown]
    return problems


def lint_export(directory: Path, manifest: Manifest) -> dict[str, list[str]]:
    """The problems of every graph of an export (empty lists when TensorRT can import them all)."""
    supported = SupportedSet.load()
    # The graph structure is enough: weights in a side file are not loaded.
    return {
        name: lint_model(onnx.load(str(directory / spec.file), load_external_data=False), supported)
        for name, spec in manifest.graphs.items()
    }


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, those of subgraphs (If, Loop, Scan) included."""
    for node in graph.node:
        yield node
        for subgraph in _subgraphs(node):
            yield from _nodes(subgraph)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _tensor_types(graph: onnx.GraphProto) -> dict[str, str]:
    """Tensor name -> ONNX type name, for every tensor whose type is known, subgraphs included."""
    types = {t.name: onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
    for node in graph.node:
        for subgraph in _subgraphs(node):
            types |= _tensor_types(subgraph)
    return types


def _data_tensors(node: onnx.NodeProto) -> list[str]:
    """The tensors whose type is the operator's data type (see the module docstring)."""
    if node.op_type in ("Constant", "ConstantOfShape"):
        return list(node.output[:1])
    if node.op_type == "Where":
        return list(node.input[1:2])
    if node.op_type in ("Cast", "CastLike"):
        return [*node.input[:1], *node.output[:1]]
    return list(node.input[:1])
