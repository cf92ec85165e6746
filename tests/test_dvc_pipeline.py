"""The real DVC pipeline (dvc.yaml + params.yaml of this repository) on a tiny configuration,
in a temporary git repository: `dvc repro` runs every stage, a second one does nothing, and a
changed student setting re-runs only that student's stages; `facekd ablation` and the benchmarks
that read pipeline outputs run on what the first `dvc repro` wrote."""
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvc_project import REPO, init_project, ran_stages, run, tiny_params

FACEKD = str(Path(sys.executable).parent / "facekd")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_project(tmp_path_factory.mktemp("dvc_project"), tiny_params())


@pytest.fixture(scope="module")
def first_repro(project: Path) -> str:
    """The output of the project's first `facekd repro` (what `make run` calls: dvc repro + a stage time table)."""
    return run([FACEKD, "repro"], project)


def test_repro_runs_everything_then_nothing_then_only_the_changed_student(project: Path, first_repro: str) -> None:
    expected = {
        "synthetic/dvc.yaml:synth", "synthetic/dvc.yaml:verification", "synthetic/dvc.yaml:teacher",
        "embed", "index", "mine", "evaluate_teacher",
        "train@alone", "train@distilled", "evaluate@alone", "evaluate@distilled",
        "quantize@alone", "quantize@distilled", "evaluate_int8@alone", "evaluate_int8@distilled", "latency",
    }
    assert ran_stages(first_repro) == expected
    table = first_repro[first_repro.index("stage times on"):]
    assert all(re.search(rf"\n  {re.escape(stage)} +\d+\.\d s", table) for stage in expected), table
    for path in ("data/store/teacher_embeddings.h5", "data/pairs/pairs.h5", "data/students/distilled/model.onnx",
                 "data/eval/teacher/metrics.json", "data/eval/distilled/metrics.json", "data/eval/heldout.bin"):
        assert (project / path).is_file(), path

    # stages import the library, and Python may cache its bytecode there: that is not a code change
    (project / "pipeline" / "data" / "synth" / "__pycache__").mkdir(exist_ok=True)
    (project / "pipeline" / "data" / "synth" / "__pycache__" / "render.cpython-311.pyc").write_bytes(b"bytecode")
    second = run([sys.executable, "-m", "dvc", "repro"], project)
    assert ran_stages(second) == set() and "Data and pipelines are up to date" in second

    # a change to mining or evaluation code re-runs the stages that run that code, and retrains nothing
    # (their outputs come out the same, so nothing after them runs either)
    for module in ("pipeline/stage_one/miners.py", "pipeline/evaluation/verification.py"):
        (project / module).write_text((project / module).read_text() + "\n# edited\n")
    edited = run([sys.executable, "-m", "dvc", "repro"], project)
    assert ran_stages(edited) == {
        "mine", "evaluate_teacher", "evaluate@alone", "evaluate@distilled", "evaluate_int8@alone", "evaluate_int8@distilled",
    }

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
    results = run([FACEKD, "results"], project)
    assert "verification on heldout" in results and (project / "data/report/roc_heldout.png").is_file()
    assert "distilled.int8" in results and (project / "data/report/accuracy_latency_heldout.png").is_file()


@pytest.mark.usefixtures("first_repro")
def test_ablation_trains_evaluates_and_resumes_only_what_changed(project: Path) -> None:
    """`facekd ablation` on the store and pairs of the first `dvc repro`."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ablation"].update(
        seeds=[0, 1],
        rows={"margin_only": {}, "iled_rpsd": {"sampler": "pairs", "distillation": {"iled": 5.0, "rpsd": 10.0}}},
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = run([FACEKD, "ablation", "--quiet"], project)
    assert first.count("ablation: training") == 4
    table = (project / "data/ablation/table.md").read_text()
    assert "| teacher |" in table and "| margin_only | 2 |" in table and "| iled_rpsd | 2 |" in table

    again = run([FACEKD, "ablation", "--quiet"], project)
    assert "ablation: training" not in again  # finished runs are read back
    subset = run([FACEKD, "ablation", "--quiet", "--rows", "margin_only"], project)
    assert "ablation: training" not in subset  # a row's runs do not depend on the other rows run beside it

    params["ablation"]["rows"]["iled_rpsd"]["distillation"]["iled"] = 2.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run([FACEKD, "ablation", "--quiet"], project)
    assert changed.count("ablation: training iled_rpsd") == 2 and "training margin_only" not in changed


@pytest.mark.usefixtures("first_repro")
def test_benchmarks_run_at_tiny_sizes(project: Path) -> None:
    """The bench scripts that read the pipeline's outputs run (figures are not checked: tests never assert on speed)."""
    train_bench = run([sys.executable, str(REPO / "bench" / "train.py"), "--student", "distilled", "--steps", "2"], project)
    assert "KD terms add" in train_bench and "offline is" in train_bench
    embed_bench = run([sys.executable, str(REPO / "bench" / "embed.py"), "--images", "80"], project)
    assert "ONNX Runtime / PyTorch" in embed_bench and "speed-up" in embed_bench
    mining_bench = run([sys.executable, str(REPO / "bench" / "mining.py"), "--sizes", "3000x32", "--queries", "100"], project)
    assert "3000" in mining_bench
