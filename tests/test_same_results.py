"""Refactors must not change results: stage one and stage two, run through the CLI on tiny data,
give the store, neighbours, pairs and student weights recorded from the code before the layout
and settings rewrite (commit 56d8c62, `python -m tests.test_same_results` wrote the golden file).

Floating-point kernels differ between CPUs, so the bytes are compared exactly on the CPU the golden
file was written on; on another CPU the values must agree closely (the test says which it did).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import yaml
from click.testing import CliRunner
from onnx import numpy_helper

from stages.cli import cli
from tests.tiny_faces import TinyFaceNet, export_tiny_onnx, write_face_folder

REPO = Path(__file__).parents[1]
GOLDEN = Path(__file__).parent / "golden" / "same_results.json"
STORE_DATASETS = ("embeddings", "norms", "labels", "keys")


def cpu_signature() -> str:
    """The CPU's model name and flags: floating-point results are only bit-identical on the same kernels."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in info.splitlines() if ":" in line}
    return hashlib.sha256(f"{lines.get('model name')}|{lines.get('flags')}".encode()).hexdigest()[:16]


def _summary(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per array: sha256 of its bytes, and for float arrays the values themselves (rounded, first 16)
    and the sum, so that another CPU can be compared with a tolerance."""
    summary = {}
    for name, array in sorted(arrays.items()):
        if array.dtype == object:
            array = np.asarray([str(item) for item in array])
        entry = {"sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), "shape": list(array.shape)}
        if array.dtype.kind == "f":
            flat = array.astype(np.float64).ravel()
            entry.update(head=[round(float(value), 6) for value in flat[:16]], sum=float(flat.sum()), abs_sum=float(np.abs(flat).sum()))
        summary[name] = entry
    return summary


def _h5_arrays(path: Path, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5file:
        names = names or tuple(name for name in h5file if isinstance(h5file[name], h5py.Dataset))
        return {name: h5file[name][()] for name in names}


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    return {initializer.name: numpy_helper.to_array(initializer) for initializer in onnx.load(str(path)).graph.initializer}


def _params(root: Path, faces: Path, teacher: Path) -> Path:
    """The repository's params.yaml, pointed at tiny data with small sizes (the keys as of commit 56d8c62, with the three `block_size` keys renamed,
    and that commit's default student backbone, MobileFaceNet)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    store, knn = str(root / "store.h5"), str(root / "knn.h5")
    params["embed"].update(dataset=str(faces), teacher=str(teacher), store=store, workers=0, images_per_block=16, batch_size=8)
    params["index"].update(store=store, out=str(root / "index.faiss"), knn=knn, knn_k=8, rows_per_search=16, threads=1)
    params["mine"].update(store=store, knn=knn, hard_negatives_per_anchor=4, hard_positives_per_anchor=3, rows_per_block=16,
                          out=str(root / "pairs.h5"), summary=str(root / "summary.json"),
                          histogram=str(root / "histogram.csv"), suspicious=str(root / "suspicious.csv"))
    params["train"].update(dataset=str(faces), store=store, pairs=str(root / "pairs.h5"), out_root=str(root / "students"),
                           backbone="mobilefacenet", embedding_dim=8, width=0.25, epochs=2, batch_size=8, threads=1)
    params["train"]["distillation"].update(rpsd_bank_size=16, rpsd_k_neg=4)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run_tiny_pipeline(root: Path) -> dict[str, dict]:
    """embed, index, mine and both default students through the CLI; the summaries of what they wrote."""
    import torch

    faces = write_face_folder(root / "faces", identities=6, images=7)
    torch.manual_seed(0)
    teacher = export_tiny_onnx(root / "teacher.onnx", TinyFaceNet().eval())
    params = _params(root, faces, teacher)
    runner = CliRunner()
    for command in (["embed"], ["index"], ["mine"], ["train", "--student", "margin_only"], ["train", "--student", "unified"]):
        result = runner.invoke(cli, [*command, "--params", str(params), "--quiet"])
        assert result.exit_code == 0, f"facekd {' '.join(command)}: {result.output}"
    return {
        "store": _summary(_h5_arrays(root / "store.h5", STORE_DATASETS)),
        "knn": _summary(_h5_arrays(root / "knn.h5")),
        "pairs": _summary(_h5_arrays(root / "pairs.h5")),
        "margin_only": _summary(_onnx_weights(root / "students" / "margin_only" / "model.onnx")),
        "unified": _summary(_onnx_weights(root / "students" / "unified" / "model.onnx")),
    }


def test_results_equal_the_recorded_ones(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    results = run_tiny_pipeline(tmp_path)
    assert results.keys() == golden["results"].keys()
    same_cpu = golden["cpu"] == cpu_signature()
    for output, arrays in golden["results"].items():
        assert results[output].keys() == arrays.keys(), output
        for name, expected in arrays.items():
            actual = results[output][name]
            assert actual["shape"] == expected["shape"], f"{output}/{name}"
            if same_cpu or "sum" not in expected:
                assert actual["sha256"] == expected["sha256"], f"{output}/{name} changed"
            else:
                np.testing.assert_allclose(actual["head"], expected["head"], rtol=1e-3, atol=1e-4, err_msg=f"{output}/{name}")
                np.testing.assert_allclose(actual["abs_sum"], expected["abs_sum"], rtol=1e-3, err_msg=f"{output}/{name}")
    if not same_cpu:
        print("another CPU than the golden file's: compared with a tolerance, not byte for byte")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        GOLDEN.write_text(json.dumps({"cpu": cpu_signature(), "results": run_tiny_pipeline(Path(directory))}, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
