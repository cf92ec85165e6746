"""The ONNX teacher: loads a face model as it ships and embeds batches of images.

Third-party face models often come with graphs that ONNX Runtime refuses or runs only at batch
size 1 (weights declared as graph inputs, unused dangling inputs, a batch dimension fixed to 1).
`load_face_model_graph` repairs those in memory, so the file on disk and its sha256 stay untouched.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from pipeline.errors import FacekdError
from pipeline.onnx_model import load_onnx

log = logging.getLogger(__name__)

BATCH_DIM_NAME = "batch"
FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}


@dataclass(frozen=True)
class Preprocessing:
    """Pixel preprocessing before the network: channel order, then (x - mean) / std.

    The default is the field's convention (insightface): RGB, (x - 127.5) / 127.5. Models that
    normalise inside their graph (SFace) use mean 0, std 1; OpenCV-trained ones use "bgr".
    """

    channel_order: str = "rgb"
    mean: float = 127.5
    std: float = 127.5

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise FacekdError(f"preprocessing.channel_order is {self.channel_order!r}; expected 'rgb' or 'bgr'")
        if self.std <= 0:
            raise FacekdError(f"preprocessing.std is {self.std!r}; expected a positive number")

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 RGB -> float32 N x H x W x 3, normalised."""
        pixels = images.astype(np.float32)
        if self.channel_order == "bgr":
            pixels = pixels[..., ::-1]
        return (pixels - np.float32(self.mean)) / np.float32(self.std)


@dataclass(frozen=True)
class InputSpec:
    """What the model's image input looks like, read from the graph."""

    name: str
    layout: str  # "NCHW" or "NHWC"
    height: int
    width: int
    element_type: str  # "float32" or "float16"


@dataclass(frozen=True)
class FaceModelGraph:
    """A validated (and possibly repaired) teacher graph, ready for a session."""

    model_bytes: bytes
    sha256: str
    input_spec: InputSpec
    output_name: str
    embedding_dim: int | None  # None when the graph leaves it symbolic
    repairs: tuple[str, ...]


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def _require_float(path: Path, value_info: onnx.ValueInfoProto, role: str, expected: str) -> int:
    """The element type of `value_info`, refused unless it is a float type."""
    element_type = value_info.type.tensor_type.elem_type
    if element_type not in FLOAT_TYPES:
        raise FacekdError(
            f"{path}: {role} '{value_info.name}' has element type "
            f"{onnx.TensorProto.DataType.Name(element_type)}; expected {expected}"
        )
    return element_type


def _repair_graph(model: onnx.ModelProto) -> list[str]:
    """Fix, in place, the graph defects that stop a model from serving as a batched teacher.

    Returns one line per kind of repair made, for logs and provenance.
    """
    graph = model.graph
    repairs: list[str] = []
    initializer_names = {init.name for init in graph.initializer}
    consumed = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    weights_as_inputs = [i for i in graph.input if i.name in initializer_names]
    unused_inputs = [i for i in graph.input if i.name not in initializer_names and i.name not in consumed]
    if weights_as_inputs or unused_inputs:
        kept_inputs = [i for i in graph.input if i.name not in initializer_names and i.name in consumed]
        del graph.input[:]
        graph.input.extend(kept_inputs)
    if weights_as_inputs:
        repairs.append(f"{len(weights_as_inputs)} weights declared as graph inputs made constants")
    if unused_inputs:
        repairs.append(f"{len(unused_inputs)} unused graph inputs removed")
    fixed_batch = []
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0 and dims[0].HasField("dim_value"):
            fixed_batch.append(f"{value.name}={dims[0].dim_value}")
            dims[0].dim_param = BATCH_DIM_NAME
    if fixed_batch:
        repairs.append(f"fixed batch dimension made dynamic ({', '.join(fixed_batch)})")
        # Intermediate shapes recorded for the fixed batch would contradict the dynamic one.
        del graph.value_info[:]
    return repairs


def load_face_model_graph(path: str | Path) -> FaceModelGraph:
    """Read, repair and validate an ONNX face model; errors name the model and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FacekdError(f"model not found: {path}")
    model = load_onnx(path)
    repairs = _repair_graph(model)
    graph = model.graph
    if len(graph.input) != 1:
        names = ", ".join(i.name for i in graph.input) or "none"
        raise FacekdError(f"{path}: expected exactly one image input, found {len(graph.input)} ({names})")
    image_input = graph.input[0]
    input_type = _require_float(path, image_input, "input", "FLOAT or FLOAT16")
    dims = _dims(image_input)
    if len(dims) != 4:
        raise FacekdError(f"{path}: input '{image_input.name}' has rank {len(dims)} {dims}; expected rank 4 (N,3,H,W or N,H,W,3)")
    if dims[1] == 3:
        layout, height, width = "NCHW", dims[2], dims[3]
    elif dims[3] == 3:
        layout, height, width = "NHWC", dims[1], dims[2]
    else:
        raise FacekdError(f"{path}: input '{image_input.name}' has shape {dims}; expected 3 colour channels (N,3,H,W or N,H,W,3)")
    if not (isinstance(height, int) and isinstance(width, int) and height >= 16 and width >= 16):
        raise FacekdError(f"{path}: input '{image_input.name}' has spatial size {height}x{width}; expected a fixed size of at least 16x16")
    if len(graph.output) < 1:
        raise FacekdError(f"{path}: the graph has no output; expected an embedding output (N, D)")
    output = graph.output[0]
    _require_float(path, output, "output", "a float embedding")
    out_dims = _dims(output)
    if len(out_dims) != 2:
        raise FacekdError(f"{path}: output '{output.name}' has shape {out_dims}; expected an embedding of shape (N, D)")
    embedding_dim = out_dims[1] if isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    return FaceModelGraph(
        model_bytes=model.SerializeToString(),
        sha256=file_sha256(path),
        input_spec=InputSpec(
            name=image_input.name,
            layout=layout,
            height=int(height),
            width=int(width),
            element_type=np.dtype(FLOAT_TYPES[input_type]).name,
        ),
        output_name=output.name,
        embedding_dim=embedding_dim,
        repairs=tuple(repairs),
    )


def choose_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime providers: CUDA when asked for or available ("auto"), else CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise FacekdError("device 'cuda' requested but this ONNX Runtime has no CUDAExecutionProvider (install facekd[gpu])")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise FacekdError(f"device is {device!r}; expected 'auto', 'cpu' or 'cuda'")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def resize_images(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 N x H x W x 3 batch (only used when the user asks for it)."""
    return np.stack([np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)) for image in images])


class OnnxFaceModel:
    """An ONNX Runtime session around a face model: preprocessing, batching, output checks."""

    def __init__(
        self,
        path: str | Path,
        preprocessing: Preprocessing = Preprocessing(),
        *,
        device: str = "auto",
        threads: int = 0,
        batch_size: int = 64,
        expected_dim: int | None = None,
        resize: bool = False,
    ) -> None:
        import onnxruntime

        self.path = Path(path)
        self.graph = load_face_model_graph(self.path)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.resize = resize
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                self.graph.model_bytes, options, providers=choose_providers(device)
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise FacekdError(f"{self.path}: ONNX Runtime cannot load the model ({error})") from None
        for repair in self.graph.repairs:
            log.info("%s: repaired at load: %s", self.path.name, repair)
        self.embedding_dim = self.graph.embedding_dim or self._probe_dim()
        if expected_dim is not None and expected_dim != self.embedding_dim:
            raise FacekdError(f"{self.path}: the model's embeddings have {self.embedding_dim} dimensions; expected {expected_dim}")

    @property
    def input_spec(self) -> InputSpec:
        return self.graph.input_spec

    @property
    def sha256(self) -> str:
        return self.graph.sha256

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _probe_dim(self) -> int:
        spec = self.input_spec
        probe = np.zeros((1, spec.height, spec.width, 3), dtype=np.uint8)
        return int(self._run(probe).shape[1])

    def _run(self, images: np.ndarray) -> np.ndarray:
        spec = self.input_spec
        pixels = self.preprocessing.apply(images)
        if spec.layout == "NCHW":
            pixels = pixels.transpose(0, 3, 1, 2)
        pixels = np.ascontiguousarray(pixels, dtype=spec.element_type)
        try:
            (embeddings,) = self.session.run([self.graph.output_name], {spec.name: pixels})
        except Exception as error:
            raise FacekdError(f"{self.path}: inference failed on a batch of shape {pixels.shape} ({error})") from None
        if embeddings.ndim != 2 or embeddings.shape[0] != len(images):
            raise FacekdError(f"{self.path}: output has shape {embeddings.shape}; expected ({len(images)}, D)")
        return embeddings.astype(np.float32, copy=False)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 RGB images -> float32 N x D embeddings (not normalised)."""
        spec = self.input_spec
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise FacekdError(f"images have shape {images.shape} and dtype {images.dtype}; expected uint8 N x H x W x 3")
        if images.shape[1:3] != (spec.height, spec.width):
            if not self.resize:
                raise FacekdError(
                    f"images are {images.shape[1]}x{images.shape[2]} but teacher {self.path.name} expects "
                    f"{spec.height}x{spec.width}; align the data to that size or set resize: true"
                )
            images = resize_images(images, spec.height, spec.width)
        if len(images) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        parts = [self._run(images[start : start + self.batch_size]) for start in range(0, len(images), self.batch_size)]
        return np.concatenate(parts)

    def embed_with_flip(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of each image and of its horizontal flip: float32 N x 2 x D."""
        both = np.concatenate([images, images[:, :, ::-1]])
        embeddings = self.embed(both)
        return np.stack([embeddings[: len(images)], embeddings[len(images) :]], axis=1)

    def provenance(self) -> dict[str, object]:
        """What identifies this teacher's embeddings: model hash, input spec, preprocessing."""
        return {
            "teacher_sha256": self.sha256,
            "teacher_file": self.path.name,
            "input_spec": asdict(self.input_spec),
            "preprocessing": asdict(self.preprocessing),
            "resize": self.resize,
            "embedding_dim": self.embedding_dim,
            "teacher_repairs": list(self.graph.repairs),
        }
