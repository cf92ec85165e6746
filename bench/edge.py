"""Edge deployment benchmark: ONNX Runtime CPU latency, size and multiply-adds, fp32 against int8.

  python bench/edge.py [--section field|pair|all] [--runs 200] [--json edge.json]

field: the field's shapes at 112 px (MobileFaceNet, iResNet-18/50/100, width 1.0), fp32 and static
       int8 (`pipeline.evaluation.quantize`, both formats tried, calibrated on random pixels), batch 1 on
       one thread and on all threads.
pair:  candidate default students and teachers at the default data's 64 px, fp32, batch 1 on one
       thread: which teacher is at least 2x slower than which student.
Networks are randomly initialised (speed does not depend on the weights); all models of a
section are timed in one interleaved loop (`pipeline.evaluation.latency.time_interleaved`), so load from
other processes affects them alike. Median and p95 of the warm runs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.evaluation.latency import Setting, count_onnx_multiply_adds, time_interleaved
from pipeline.stage_two.models import build_backbone
from pipeline.stage_two.models.export import export_onnx
from pipeline.evaluation.config import QuantizeConfig
from pipeline.evaluation.quantize import quantize_model

FIELD_MODELS = {"MobileFaceNet": ("mobilefacenet", 1.0), "iResNet-18": ("iresnet18", 1.0),
                "iResNet-50": ("iresnet50", 1.0), "iResNet-100": ("iresnet100", 1.0)}
PAIR_STUDENTS = {"MobileFaceNet w0.125": ("mobilefacenet", 0.125), "MobileFaceNet w0.25": ("mobilefacenet", 0.25),
                 "iResNet-18 w0.0625": ("iresnet18", 0.0625)}
PAIR_TEACHERS = {f"iResNet-{depth} w{width}": (f"iresnet{depth}", width) for depth in (18, 34, 50) for width in (0.125, 0.25)}
CALIBRATION_IMAGES = 32


def export(folder: Path, name: str, backbone: str, width: float, size: int) -> Path:
    """A randomly initialised backbone whose BatchNorm statistics are those of its own activations.

    With fresh statistics (mean 0, variance 1) the activations of a deep random iResNet overflow
    float32 (inf embeddings), which neither int8 calibration nor the cosine check survives.
    """
    torch.manual_seed(0)
    model = build_backbone(backbone, 512, size, width)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(16, 3, size, size))
    path = folder / f"{name.replace(' ', '_')}.onnx"
    export_onnx(model, path, size)
    return path


def field_section(folder: Path, runs: int) -> dict[str, dict]:
    """fp32 and int8 of the field's backbones at 112 px: size, MACs, batch-1 latency on 1 and all threads."""
    rng = np.random.default_rng(0)
    paths: dict[str, Path] = {}
    formats: dict[str, str] = {}
    for name, (backbone, width) in FIELD_MODELS.items():
        paths[name] = export(folder, name, backbone, width, 112)
        pixels = rng.uniform(-1, 1, (2 * CALIBRATION_IMAGES, 3, 112, 112)).astype(np.float32)
        paths[f"{name} int8"] = folder / f"{paths[name].stem}.int8.onnx"
        report = quantize_model(paths[name], paths[f"{name} int8"], pixels[:CALIBRATION_IMAGES], pixels[CALIBRATION_IMAGES:],
                                QuantizeConfig(formats=["qdq", "qoperator"], latency_runs=max(20, runs // 10)))
        formats[f"{name} int8"] = report["chosen"]
        print(f"{name}: {report['reason']}", flush=True)
    results = {name: {"size_bytes": path.stat().st_size, "multiply_adds": count_onnx_multiply_adds(path)}
               for name, path in paths.items()}
    for setting in (Setting("batch1_1thread", 1, 1, runs), Setting("batch1_all_threads", 1, 0, runs)):
        for name, timing in time_interleaved(paths, setting).items():
            results[name][setting.name] = timing
    for name, chosen in formats.items():
        results[name]["format"] = chosen
    return results


def pair_section(folder: Path, runs: int) -> dict[str, dict]:
    """fp32 at 64 px of the candidate students and teachers: MACs and batch-1, 1-thread latency."""
    paths = {name: export(folder, name, backbone, width, 64)
             for name, (backbone, width) in (PAIR_STUDENTS | PAIR_TEACHERS).items()}
    timings = time_interleaved(paths, Setting("batch1_1thread", 1, 1, runs))
    return {name: {"multiply_adds": count_onnx_multiply_adds(path), "size_bytes": path.stat().st_size,
                   "batch1_1thread": timings[name]} for name, path in paths.items()}


def timing(summary: dict[str, float], digits: int = 2) -> str:
    """"median (p95, min)" in ms: the median for comparison, p95 and min to show how disturbed the runs were."""
    return f"{summary['median_ms']:.{digits}f} ({summary['p95_ms']:.{digits}f}, {summary['min_ms']:.{digits}f})"


def print_field(results: dict[str, dict]) -> None:
    print("\n| model (112 px) | MACs | fp32 MB | int8 MB | int8 format | fp32 b1 1-thread ms: median (p95, min) "
          "| int8 b1 1-thread ms: median (p95, min) | int8 speed-up (median) | fp32 b1 all-threads ms | int8 b1 all-threads ms |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in FIELD_MODELS:
        fp32, int8 = results[name], results[f"{name} int8"]
        single, single8 = fp32["batch1_1thread"], int8["batch1_1thread"]
        print(f"| {name} | {fp32['multiply_adds'] / 1e9:.2f} G | {fp32['size_bytes'] / 1e6:.1f} | {int8['size_bytes'] / 1e6:.1f} "
              f"| {int8['format']} | {timing(single)} | {timing(single8)} "
              f"| {single['median_ms'] / single8['median_ms']:.2f}x | {timing(fp32['batch1_all_threads'])} "
              f"| {timing(int8['batch1_all_threads'])} |")


def print_pair(results: dict[str, dict]) -> None:
    print("\n| model (64 px, fp32) | role | MACs | b1 1-thread ms: median (p95, min) |")
    print("| --- | --- | ---: | ---: |")
    for name, model in results.items():
        role = "student" if name in PAIR_STUDENTS else "teacher"
        print(f"| {name} | {role} | {model['multiply_adds'] / 1e6:.1f} M | {timing(model['batch1_1thread'], 3)} |")
    print("\nteacher / student latency, batch 1, 1 thread: ratio of medians / ratio of minimums (>= 2x marked **):\n")
    print("| teacher \\ student | " + " | ".join(PAIR_STUDENTS) + " |")
    print("| --- |" + " ---: |" * len(PAIR_STUDENTS))
    for teacher in PAIR_TEACHERS:
        cells = []
        for student in PAIR_STUDENTS:
            ratios = [results[teacher]["batch1_1thread"][key] / results[student]["batch1_1thread"][key] for key in ("median_ms", "min_ms")]
            cells.append(" / ".join(f"**{r:.2f}x**" if r >= 2 else f"{r:.2f}x" for r in ratios))
        print(f"| {teacher} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=("field", "pair", "all"), default="all")
    parser.add_argument("--runs", type=int, default=200, help="Warm runs per model and setting.")
    parser.add_argument("--json", type=Path, help="Also write the raw results here.")
    arguments = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="facekd-edge-") as folder:
        for section, measure, show in (("pair", pair_section, print_pair), ("field", field_section, print_field)):
            if arguments.section in (section, "all"):
                results[section] = measure(Path(folder), arguments.runs)
                show(results[section])
                if arguments.json:  # after each section: a long run keeps what it measured
                    arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
