"""The real DVC pipeline (dvc.yaml + params.yaml of this repository) on a tiny configuration,
in a temporary git repository: `dvc repro` runs every stage, a second one does nothing, and a
changed student setting re-runs only that student's stages."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(
        size=32, teacher_identities=6, teacher_images=4, student_identities=5, student_images=4,
        heldout_identities=5, heldout_images=4, workers=1,
    )
    params["verification"]["num_pairs"] = 20
    params["teacher"].update(width=0.125, embedding_dim=16, epochs=1, batch_size=8, compile=False, threads=1)
    params["embed"].update(workers=0, block_size=8, batch_size=16)
    params["index"]["knn_k"] = 4
    params["mine"]["hard_negatives_per_anchor"] = 2
    params["mine"]["hard_positives_per_anchor"] = 2
    params["train"].update(width=0.125, embedding_dim=8, epochs=1, batch_size=8, threads=1)
    params["train"]["distillation"]["rpsd_bank_size"] = 16
    params["quantize"].update(calibration_images=8, validation_images=8, latency_runs=5)
    params["latency"].update(runs=5, throughput_runs=2, throughput_batch=4)
    params["students"] = {
        "alone": {},
        "distilled": {"sampler": "pairs", "distillation": {"iled": 5.0, "rpsd": 10.0}},
    }
    return params


def run(command: list[str], cwd: Path) -> str:
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    return completed.stdout + completed.stderr


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def init_project(root: Path, params: dict) -> Path:
    """A git repository at `root` holding the code and pipeline files of this one, with `params`."""
    for folder in ("pipeline", "stages", "synthetic", ".dvc"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache", "*.lock"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.name", "facekd tests"], root)  # `dvc exp run` commits experiments
    run(["git", "config", "user.email", "tests@facekd.invalid"], root)
    run(["git", "add", "."], root)
    run(["git", "commit", "-qm", "tiny pipeline"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_project(tmp_path_factory.mktemp("dvc_project"), tiny_params())


def test_repro_runs_everything_then_nothing_then_only_the_changed_student(project: Path) -> None:
    facekd = str(Path(sys.executable).parent / "facekd")
    first = run([facekd, "repro"], project)  # what `make run` calls: dvc repro + a stage time table
    expected = {
        "synthetic/dvc.yaml:synth", "synthetic/dvc.yaml:verification", "synthetic/dvc.yaml:teacher",
        "embed", "index", "mine", "evaluate_teacher",
        "train@alone", "train@distilled", "evaluate@alone", "evaluate@distilled",
        "quantize@alone", "quantize@distilled", "evaluate_int8@alone", "evaluate_int8@distilled", "latency",
    }
    assert ran_stages(first) == expected
    table = first[first.index("stage times on"):]
    assert all(re.search(rf"\n  {re.escape(stage)} +\d+\.\d s", table) for stage in expected), table
    for path in ("data/store/teacher_embeddings.h5", "data/pairs/pairs.h5", "data/students/distilled/model.onnx",
                 "data/eval/teacher/metrics.json", "data/eval/distilled/metrics.json", "data/eval/heldout.bin"):
        assert (project / path).is_file(), path

    # stages import the library, and Python may cache its bytecode there: that is not a code change
    (project / "pipeline" / "__pycache__").mkdir(exist_ok=True)
    (project / "pipeline" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"bytecode")
    second = run([sys.executable, "-m", "dvc", "repro"], project)
    assert ran_stages(second) == set() and "Data and pipelines are up to date" in second

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["students"]["distilled"]["distillation"]["rpsd"] = 5.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run([sys.executable, "-m", "dvc", "repro"], project)
    distilled_stages = {"train@distilled", "evaluate@distilled", "quantize@distilled", "evaluate_int8@distilled", "latency"}
    assert ran_stages(third) == distilled_stages

    # a sweep as the README shows it: `dvc exp run -S` on an existing key
    experiment = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "students.distilled.distillation.iled=2.0"], project)
    assert ran_stages(experiment) == distilled_stages

    metrics = run([sys.executable, "-m", "dvc", "metrics", "show"], project)
    assert "data/eval/distilled/metrics.json" in metrics and "accuracy" in metrics
    results = run([facekd, "results"], project)
    assert "verification on heldout" in results and (project / "data/report/roc_heldout.png").is_file()
    assert "distilled.int8" in results and (project / "data/report/accuracy_latency_heldout.png").is_file()


def test_ablation_trains_evaluates_and_resumes_only_what_changed(project: Path) -> None:
    """`facekd ablation` on the store and pairs the pipeline test made (runs after it)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ablation"].update(
        seeds=[0, 1],
        rows={"margin_only": {}, "iled_rpsd": {"sampler": "pairs", "distillation": {"iled": 5.0, "rpsd": 10.0}}},
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    facekd = str(Path(sys.executable).parent / "facekd")
    first = run([facekd, "ablation", "--quiet"], project)
    assert first.count("ablation: training") == 4
    table = (project / "data/ablation/table.md").read_text()
    assert "| teacher |" in table and "| margin_only | 2 |" in table and "| iled_rpsd | 2 |" in table

    again = run([facekd, "ablation", "--quiet"], project)
    assert "ablation: training" not in again  # finished runs are read back
    subset = run([facekd, "ablation", "--quiet", "--rows", "margin_only"], project)
    assert "ablation: training" not in subset  # a row's runs do not depend on the other rows run beside it

    params["ablation"]["rows"]["iled_rpsd"]["distillation"]["iled"] = 2.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([facekd, "ablation", "--quiet"], project)
    assert changed.count("ablation: training iled_rpsd") == 2 and "training margin_only" not in changed


def test_benchmarks_run_at_tiny_sizes(project: Path) -> None:
    """The bench scripts run (figures are not checked: tests never assert on speed)."""
    train_bench = run([sys.executable, str(REPO / "bench" / "train.py"), "--student", "distilled", "--steps", "2"], project)
    assert "KD terms add" in train_bench and "offline is" in train_bench
    embed_bench = run([sys.executable, str(REPO / "bench" / "embed.py"), "--images", "80"], project)
    assert "ONNX Runtime / PyTorch" in embed_bench and "speed-up" in embed_bench
    mining_bench = run([sys.executable, str(REPO / "bench" / "mining.py"), "--sizes", "3000x32", "--queries", "100"], project)
    assert "3000" in mining_bench
