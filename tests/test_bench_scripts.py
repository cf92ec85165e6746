"""The benchmarks that need no pipeline outputs run at tiny sizes (figures are not checked: tests never assert on speed)."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.dvc_project import tiny_params

REPO = Path(__file__).parents[1]


def run_bench(*arguments: str) -> str:
    result = subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_margin_head_exact_knn_and_sampler_benches() -> None:
    assert "partial 0.5" in run_bench("bench/margin_head.py", "--classes", "2000", "--rates", "0.5", "--dim", "16", "--repeats", "1")
    exact = run_bench("bench/exact_knn.py", "--rows", "3000", "--dim", "16", "--queries", "50", "--repeats", "1")
    assert exact.count("ids equal to Flat's for 1.0000 of queries") == 3
    assert "N = 3000" in run_bench("bench/sampler.py", "--sizes", "3000", "--steps", "3")


def test_kd_step_bench(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "train": {"backbone": "mobilefacenet", "width": 0.125, "embedding_dim": 16, "batch_size": 8, "threads": 1},
        "students": {"tiny": {"distillation": {"iled": 5.0, "rpsd": 10.0, "rpsd_bank_size": 32, "rpsd_k_neg": 4}}},
    }))
    output = run_bench("bench/kd_step.py", "--params", str(params), "--student", "tiny", "--repeats", "1")
    assert "KD terms add" in output


def test_mine_workers_bench() -> None:
    output = run_bench("bench/mine_workers.py", "--rows", "3000", "--dim", "16", "--factory", "Flat", "--rows-per-block", "500")
    assert "3000 x 16, rows_per_block 500" in output and "outputs identical: True" in output


def test_index_workers_bench() -> None:
    output = run_bench("bench/index_workers.py", "--rows", "3000", "--dim", "16", "--factory", "streamed",
                       "--factory", "Flat", "--rows-per-search", "500")
    assert output.count("kNN files identical: True") == 2 and "streamed, 3000 x 16" in output


def test_inspection_bench() -> None:
    output = run_bench("bench/inspection.py", "--images", "300", "--records", "300", "--shown", "3", "--repeats", "1",
                       "--suspicious-rows", "4000", "--rows-per-pass", "1000")
    assert output.count("listing the dataset (open_dataset, before)") == 2
    assert output.count("by key (open_keyed_images, now)") == 2
    assert "passes of 1000 rows" in output and "the 4 CSVs are byte-identical: True" in output
    assert "a record per pair, passes of 1000 rows" in output


def test_scale_bench(tmp_path: Path, tiny_teacher: Path) -> None:
    """Two runs, one size each, the second merging the first's JSON into its report."""
    params = tiny_params()  # one student: at tiny sizes `facekd train` is the slowest stage (torch start-up, ONNX export)
    params["students"] = {"unified": yaml.safe_load((REPO / "params.yaml").read_text())["students"]["unified"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["bench/scale.py", "--params", str(tmp_path / "params.yaml"), "--teacher", str(tiny_teacher),
              "--work-dir", str(tmp_path / "work")]
    run_bench(*common, "--sizes", "200", "--json", str(tmp_path / "small.json"),  # 50 identities
              "--index-factory", "HNSW8", "--ef-search", "4", "--sampled-centres", "10")
    output = run_bench(*common, "--sizes", "400", "--json", str(tmp_path / "scale.json"), "--merge", str(tmp_path / "small.json"))
    stages = ["synth", "verification", "embed", "index", "mine", "pairs top --paths", "pairs sheet", "train@unified",
              "evaluate@unified"]
    for stage in stages:
        assert f"| {stage} | 200 |" in output and f"| {stage} | 400 |" in output
    assert "| index, N^2 |" in output
    small, report = (json.loads((tmp_path / name).read_text()) for name in ("small.json", "scale.json"))
    assert [(m["stage"], m["images"]) for m in small["measurements"]] == [(stage, 200) for stage in stages]
    assert [(m["stage"], m["images"]) for m in report["measurements"]] == [(stage, 400) for stage in stages]
    assert all(m["seconds"] > 0 and m["cpu_seconds"] > 0 and m["peak_rss_bytes"] > 0
               and (m["output_bytes"] > 0) == (m["stage"] != "pairs top --paths")  # it only prints
               for m in report["measurements"] + small["measurements"])
    assert {(row["stage"], row["from_images"], row["to_images"]) for row in report["exponents"]} == {
        (stage, 200, 400) for stage in stages
    }
    assert {row["images"] for row in report["projections"]} == {5_800_000, 42_000_000}
    details = {(m["stage"], m["images"]): m["details"] for m in small["measurements"] + report["measurements"]}
    assert details["index", 200].startswith("HNSW8, ef_search ") and "recall@" in details["index", 200]
    assert details["train@unified", 200] == "Partial FC, margin_sample_rate 0.2: 10 centres a step"
    assert details["index", 400].startswith("Flat") and details["train@unified", 400].startswith("full softmax over ")
    assert list((tmp_path / "work").iterdir()) == []  # each scratch project is deleted once measured


def test_scale_bench_picks_readmes_ivf_per_size() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from scale import ivf_factory

    assert [ivf_factory(n) for n in (100, 10_000, 100_000, 1_000_000, 5_800_000, 42_000_000)] == [
        "IVF1,Flat", "IVF32,Flat", "IVF512,Flat", "IVF4096,Flat", "IVF16384_HNSW32,Flat", "IVF131072_HNSW32,Flat",
    ]


def test_scale_bench_reads_ahead_where_the_decoded_images_do_not_fit() -> None:
    """README's advice for training sets larger than `train.images_memory_gb` decoded: a loader worker."""
    sys.path.insert(0, str(REPO / "bench"))
    from scale import scale_params, train_details

    from pipeline.settings import validate_settings

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    fits, too_large = (validate_settings(scale_params(base, images, 20, Path("t.onnx"), 64, None, None, 1000))
                       for images in (100_000, 1_000_000))  # 1.2 and 12.3 GB decoded; the budget is 2 GB
    assert (fits.train.num_workers, too_large.train.num_workers) == (0, 1)
    assert train_details(fits, "train@unified") == "Partial FC, margin_sample_rate 0.2: 1000 centres a step"
    assert train_details(too_large, "train@unified").endswith("; images decoded per batch, 1 loader worker(s)")


def test_huge_pages_bench() -> None:
    output = run_bench("bench/huge_pages.py", "--rows", "3000", "--dim", "16")
    assert "3000 x 16" in output and "kNN files identical: True" in output
