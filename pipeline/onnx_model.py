"""Reading ONNX files so that a model can read nothing outside its own folder.

An ONNX tensor may keep its bytes in an "external data" file named by a path inside the model.
ONNX Runtime follows such paths (relative ones from the working directory when the model comes
as bytes), and `onnx.load` checks only dense initializers, so a hostile model could pull any
readable file into its weights and from there into our outputs. Every ONNX file facekd reads
goes through `load_onnx`: it checks every external reference (dense and sparse initializers,
node attributes, subgraphs, functions) before anything is read, then loads the data itself, so
the model handed on holds all its bytes and refers to no file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import onnx
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

from pipeline.errors import FacekdError


def _graph_tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor of `graph` and of its subgraphs, each with a description of where it is."""
    for tensor in graph.initializer:
        yield f"{where} initializer '{tensor.name}'", tensor
    for sparse in graph.sparse_initializer:
        yield f"{where} sparse initializer '{sparse.values.name}' (values)", sparse.values
        yield f"{where} sparse initializer '{sparse.values.name}' (indices)", sparse.indices
    yield from _node_tensors(graph.node, where)


def _node_tensors(nodes: list[onnx.NodeProto], where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    """The tensors held in node attributes (Constant's value, ...) and in subgraphs (If, Loop, Scan)."""
    for node in nodes:
        for attribute in node.attribute:
            place = f"{where} node '{node.name or node.op_type}' attribute '{attribute.name}'"
            if attribute.HasField("t"):
                yield place, attribute.t
            for tensor in attribute.tensors:
                yield place, tensor
            sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
            for sparse in [*sparse_tensors, *attribute.sparse_tensors]:
                yield f"{place} (sparse values)", sparse.values
                yield f"{place} (sparse indices)", sparse.indices
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                yield from _graph_tensors(subgraph, f"{place} subgraph")


def model_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor a model holds, wherever ONNX lets one be (described for error messages)."""
    yield from _graph_tensors(model.graph, "graph")
    for function in model.functions:
        yield from _node_tensors(function.node, f"function '{function.name}'")
    for number, training in enumerate(model.training_info):
        yield from _graph_tensors(training.initialization, f"training_info[{number}].initialization")
        yield from _graph_tensors(training.algorithm, f"training_info[{number}].algorithm")


def _check_external_location(path: Path, where: str, tensor: onnx.TensorProto) -> None:
    """Refuse external data that is not a file inside the model's own folder."""
    try:
        location = ExternalDataInfo(tensor).location  # onnx's own parser: the location onnx will read
    except ValueError as error:  # a negative offset or length
        raise FacekdError(f"{path}: {where} has invalid external data ({error})") from None
    reads = f"{path}: {where} reads external data from"
    expected = "expected a file inside the model's folder"
    if not location:
        raise FacekdError(f"{path}: {where} has external data without a location; {expected}")
    if os.path.isabs(location):
        raise FacekdError(f"{reads} absolute path {location!r}; {expected}")
    folder = path.parent.resolve()
    target = (folder / location).resolve()
    if not target.is_relative_to(folder):
        raise FacekdError(f"{reads} {location!r}, outside the model's folder; {expected}")
    if not target.is_file():
        raise FacekdError(f"{reads} {location!r}, which does not exist; {expected}")


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The model at `path` with all its external data inside it, read only from the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise FacekdError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError, ... for non-models
        raise FacekdError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    external = [(where, tensor) for where, tensor in model_tensors(model) if uses_external_data(tensor)]
    for where, tensor in external:
        _check_external_location(path, where, tensor)
    for where, tensor in external:
        try:
            load_external_data_for_tensor(tensor, str(path.parent))
        except Exception as error:  # a short file, a bad offset: onnx raises ValueError, OSError, ...
            raise FacekdError(f"{path}: cannot read the external data of {where} ({error})") from None
    return model
