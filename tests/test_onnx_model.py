"""Hostile ONNX files: external data may come only from files inside the model's own folder.

The models are real ONNX graphs built with onnx.helper and run by ONNX Runtime. Their weights W
(3 x 4) come from external data; the embedding of an all-black image is -(W[0] + W[1] + W[2]),
so a model that reads a canary file gives the canary's numbers back as its embedding.
"""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from pipeline.errors import FacekdError
from pipeline.onnx_model import load_onnx
from pipeline.face_model import OnnxFaceModel

WEIGHTS = np.arange(1, 13, dtype=np.float32).reshape(3, 4)  # what a legitimate weight file holds
CANARY = np.full((3, 4), 7.25, dtype=np.float32)  # a file the model must never read
BLACK = np.zeros((1, 16, 16, 3), dtype=np.uint8)  # preprocessed to -1 everywhere


def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def _dense(location: str) -> TensorProto:
    return _external(TensorProto(name="W", dims=[3, 4], data_type=TensorProto.FLOAT), location)


def _sparse(values_location: str | None, indices_location: str | None = None) -> onnx.SparseTensorProto:
    """W as a sparse initializer listing all 12 entries; values and/or indices kept in external files."""
    values = TensorProto(name="W", dims=[12], data_type=TensorProto.FLOAT)
    indices = helper.make_tensor("W_indices", TensorProto.INT64, [12], np.arange(12).tolist())
    if values_location is not None:
        _external(values, values_location)
    else:
        values.raw_data = WEIGHTS.tobytes()
    if indices_location is not None:
        indices.ClearField("int64_data")
        _external(indices, indices_location)
    return helper.make_sparse_tensor(values, indices, [3, 4])


def _face_model(
    path: Path,
    dense: TensorProto | None = None,
    sparse: onnx.SparseTensorProto | None = None,
    extra_nodes: tuple[onnx.NodeProto, ...] = (),
) -> Path:
    """input (N,3,16,16) -> channel means (N,3) -> MatMul W -> embedding (N,4)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["means"]),
        helper.make_node("MatMul", ["means", "W"], ["embedding"]),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "face",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])],
        initializer=[dense] if dense is not None else [],
        sparse_initializer=[sparse] if sparse is not None else [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/work (the cwd, holding cwd_canary.txt), tmp/canary.bin, tmp/model/weights.bin."""
    (tmp_path / "work").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "work" / "cwd_canary.txt").write_bytes(CANARY.tobytes())
    (tmp_path / "canary.bin").write_bytes(CANARY.tobytes())
    (tmp_path / "model" / "weights.bin").write_bytes(WEIGHTS.tobytes())
    (tmp_path / "model" / "indices.bin").write_bytes(np.arange(12, dtype=np.int64).tobytes())
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


@pytest.mark.parametrize("kind", ["dense", "sparse values", "sparse indices"])
def test_external_data_in_the_models_folder_is_read(folders: Path, kind: str) -> None:
    """The control: external data beside the model is legitimate, and really becomes the weights."""
    path = folders / "model" / "face.onnx"
    if kind == "dense":
        _face_model(path, dense=_dense("weights.bin"))
    elif kind == "sparse values":
        _face_model(path, sparse=_sparse("weights.bin"))
    else:
        _face_model(path, sparse=_sparse(None, "indices.bin"))
    embedding = OnnxFaceModel(path, device="cpu").embed(BLACK)
    np.testing.assert_allclose(embedding[0], -WEIGHTS.sum(axis=0))


def test_the_sparse_attack_is_real_without_the_check(folders: Path) -> None:
    """ONNX Runtime, given the model as bytes, reads a sparse initializer's file from the working directory."""
    path = _face_model(folders / "model" / "face.onnx", sparse=_sparse("cwd_canary.txt"))
    session = onnxruntime.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    (leaked,) = session.run(["embedding"], {"input": -np.ones((1, 3, 16, 16), dtype=np.float32)})
    np.testing.assert_allclose(leaked[0], -CANARY.sum(axis=0))
    with pytest.raises(FacekdError, match="face.onnx: graph sparse initializer 'W' .*'cwd_canary.txt', which does not exist"):
        OnnxFaceModel(path, device="cpu")


def _constant(location: str) -> onnx.NodeProto:
    """A Constant node whose value is kept in an external file."""
    return helper.make_node("Constant", [], ["c"], value=_dense(location))


def _constant_in_if_branch(location: str) -> onnx.NodeProto:
    """An If node whose then-branch holds a Constant with an external value: a subgraph's tensor."""
    output = [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3, 4])]
    inline = helper.make_tensor("inline", TensorProto.FLOAT, [3, 4], WEIGHTS.ravel().tolist())
    else_branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=inline)], "else", [], output)
    then_branch = helper.make_graph([_constant(location)], "then", [], output)
    return helper.make_node("If", ["flag"], ["chosen"], then_branch=then_branch, else_branch=else_branch)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: {"dense": _dense("cwd_canary.txt")}, r"initializer 'W' .*'cwd_canary.txt', which does not exist"),
        (lambda: {"dense": _dense("../canary.bin")}, r"initializer 'W' .*'\.\./canary.bin', outside the model's folder"),
        (lambda: {"dense": _dense("sub/../../canary.bin")}, r"outside the model's folder"),
        (lambda: {"dense": _external(_dense("weights.bin"), "../canary.bin")}, r"'\.\./canary.bin', outside"),
        (lambda: {"sparse": _sparse("../canary.bin")}, r"sparse initializer 'W' \(values\) .*outside the model's folder"),
        (lambda: {"sparse": _sparse(None, "../canary.bin")}, r"sparse initializer 'W' \(indices\) .*outside"),
        (
            lambda: {"dense": _dense("weights.bin"), "extra_nodes": (_constant("../canary.bin"),)},
            r"node 'Constant' attribute 'value' .*outside the model's folder",
        ),
        (
            lambda: {"dense": _dense("weights.bin"), "extra_nodes": (_constant_in_if_branch("../canary.bin"),)},
            r"node 'If' attribute 'then_branch' subgraph node 'Constant' attribute 'value' .*outside",
        ),
    ],
    ids=[
        "dense-cwd", "dense-parent", "dense-dotdot-inside", "dense-second-location", "sparse-values", "sparse-indices",
        "constant", "if-subgraph",
    ],
)
def test_external_data_outside_the_folder_is_refused(folders: Path, build, message: str) -> None:
    path = _face_model(folders / "model" / "face.onnx", **build())
    with pytest.raises(FacekdError, match="face.onnx: .*" + message):
        OnnxFaceModel(path, device="cpu")


def test_absolute_paths_symlinks_out_and_bad_offsets_are_refused(folders: Path) -> None:
    path = folders / "model" / "face.onnx"
    negative_offset = _dense("weights.bin")
    negative_offset.external_data.add(key="offset", value="-1")
    _face_model(path, dense=negative_offset)
    with pytest.raises(FacekdError, match="initializer 'W' has invalid external data .*offset must be non-negative"):
        load_onnx(path)
    _face_model(path, dense=_dense(str(folders / "canary.bin")))
    with pytest.raises(FacekdError, match="reads external data from absolute path"):
        load_onnx(path)
    (folders / "model" / "link.bin").symlink_to(folders / "canary.bin")
    _face_model(path, sparse=_sparse("link.bin"))
    with pytest.raises(FacekdError, match="'link.bin', outside the model's folder"):
        load_onnx(path)


def test_loaded_model_refers_to_no_file(folders: Path) -> None:
    """What `load_onnx` hands on holds its bytes: moved elsewhere, it still runs and reads nothing."""
    path = _face_model(folders / "model" / "face.onnx", sparse=_sparse("weights.bin"), dense=None)
    model = load_onnx(path)
    (folders / "model" / "weights.bin").unlink()
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (embedding,) = session.run(["embedding"], {"input": -np.ones((1, 3, 16, 16), dtype=np.float32)})
    np.testing.assert_allclose(embedding[0], -WEIGHTS.sum(axis=0))
