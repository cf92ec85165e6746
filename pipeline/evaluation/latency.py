"""What an ONNX model costs on the deployment CPU: latency, throughput, file size, multiply-adds.

Timings on a shared machine drift, so every model is timed in the same loop, one run of each in
turn (interleaved), and summarised by median and 95th percentile rather than by the mean.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from pipeline.errors import FacekdError
from pipeline.evaluation.config import LatencyConfig
from pipeline.evaluation.inputs import deployed_models
from pipeline.face_model import load_face_model_graph
from pipeline.files import write_text_atomically

log = logging.getLogger(__name__)

# op type -> index of its weight input; the int8 ops do the multiply-adds of the fp32 op they replace
CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_OPS = {"Gemm": 1, "QGemm": 3, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3}


@dataclass(frozen=True)
class Setting:
    """One way of running a model: images per call and ONNX Runtime threads (0 = all cores)."""

    name: str
    batch_size: int
    threads: int
    runs: int


def _input_batch(session: onnxruntime.InferenceSession, batch_size: int) -> dict[str, np.ndarray]:
    """Random normalised pixels of the model's input shape (speed does not depend on the values)."""
    spec = session.get_inputs()[0]
    shape = [batch_size, *spec.shape[1:]]
    dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
    return {spec.name: np.random.default_rng(0).uniform(-1, 1, shape).astype(dtype)}


def _shapes_at_batch_one(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes of the named tensors for one image, by running `model` once with them as its outputs.

    ONNX shape inference stops at ONNX Runtime's own int8 operators (QOperator graphs), a run
    does not; initializers are read from the graph. Replaces the outputs of `model`.
    """
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    wanted = [name for name in dict.fromkeys(names) if name not in shapes]
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(wanted, _input_batch(session, 1))
    return shapes | {name: list(value.shape) for name, value in zip(wanted, values)}


def count_onnx_multiply_adds(path: str | Path) -> int:
    """Multiply-adds of the convolutions and matrix products for one image, read from the graph.

    Counted as the PyTorch hook counter does (`pipeline.stage_two.models.count_multiply_adds`): each output
    element of a convolution costs in_channels / groups x kernel area, of a matrix product the
    inner dimension. fp32, QDQ and QOperator graphs of one network give the same count.
    """
    model = onnx.load_from_string(load_face_model_graph(path).model_bytes)  # repaired as evaluation runs it
    nodes = [node for node in model.graph.node if node.op_type in CONV_OPS or node.op_type in MATMUL_OPS]
    weight_names = [node.input[CONV_OPS.get(node.op_type, MATMUL_OPS.get(node.op_type))] for node in nodes]
    shapes = _shapes_at_batch_one(model, weight_names + [node.output[0] for node in nodes])
    multiply_adds = 0
    for node, weight_name in zip(nodes, weight_names):
        weight, output = shapes[weight_name], shapes[node.output[0]]
        if node.op_type in CONV_OPS:
            multiply_adds += int(np.prod(output)) * int(np.prod(weight[1:]))
        else:
            transposed = node.op_type in ("Gemm", "QGemm") and any(a.name == "transB" and a.i == 1 for a in node.attribute)
            multiply_adds += int(np.prod(output)) * weight[-1 if transposed else -2]
    return multiply_adds


def open_session(path: str | Path, threads: int) -> onnxruntime.InferenceSession:
    """A CPU session as deployed: `threads` intra-op threads (0 = all cores), one inter-op thread."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    graph = load_face_model_graph(path)  # the same repairs as evaluation, so the same graph is timed
    return onnxruntime.InferenceSession(graph.model_bytes, options, providers=["CPUExecutionProvider"])


def time_interleaved(paths: dict[str, Path], setting: Setting, warmup: int = 10) -> dict[str, dict[str, float]]:
    """Median, p95 and min milliseconds per call of each model under `setting`, the models taking turns."""
    sessions = {name: open_session(path, setting.threads) for name, path in paths.items()}
    feeds = {name: _input_batch(session, setting.batch_size) for name, session in sessions.items()}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for run in range(warmup + setting.runs):
        for name, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feeds[name])
            if run >= warmup:
                seconds[name].append(time.perf_counter() - started)
    summary = {}
    for name, values in seconds.items():
        milliseconds = np.array(values) * 1e3
        median = float(np.median(milliseconds))
        summary[name] = {
            "median_ms": median,
            "p95_ms": float(np.percentile(milliseconds, 95)),
            "min_ms": float(milliseconds.min()),  # the least disturbed run: near the unloaded latency
            "images_per_second": setting.batch_size * 1e3 / median,
            "runs": len(values),
        }
    return summary


def default_settings(runs: int, throughput_runs: int, throughput_batch: int) -> list[Setting]:
    """Batch 1 on one thread and on all cores (latency), and a large batch on all cores (throughput)."""
    return [
        Setting("batch1_1thread", 1, 1, runs),
        Setting("batch1_all_threads", 1, 0, runs),
        Setting(f"batch{throughput_batch}_all_threads", throughput_batch, 0, throughput_runs),
    ]


def latency_report(paths: dict[str, Path], settings: list[Setting]) -> dict[str, object]:
    """Per model: file size, multiply-adds and timings under each setting; plus the machine."""
    for name, path in paths.items():
        if not Path(path).is_file():
            raise FacekdError(f"model not found: {path} (model '{name}'); expected an ONNX file")
    models: dict[str, dict[str, object]] = {
        name: {"file": str(path), "size_bytes": os.path.getsize(path), "multiply_adds": count_onnx_multiply_adds(path)}
        for name, path in paths.items()
    }
    for setting in settings:
        log.info("timing %d models: %s", len(paths), setting.name)
        for name, timing in time_interleaved(paths, setting).items():
            models[name][setting.name] = timing
    return {
        "machine": {"cpu_count": os.cpu_count(), "onnxruntime": onnxruntime.__version__},
        "settings": {s.name: {"batch_size": s.batch_size, "threads": s.threads, "runs": s.runs} for s in settings},
        "models": models,
    }


def time_deployed_models(
    config: LatencyConfig, teacher: str | Path, students_root: str | Path, students: list[str]
) -> dict[str, object]:
    """`facekd latency`: the latency report of the teacher and each student's fp32 and int8 models
    (found under `students_root`), written to `config.out` and returned."""
    models = deployed_models(teacher, students_root, students)
    report = latency_report(models, default_settings(config.runs, config.throughput_runs, config.throughput_batch))
    write_text_atomically(config.out, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
