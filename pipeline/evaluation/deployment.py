"""The deployment side of `facekd results`: which latency-report columns to show, their cells, and
each student's int8 model against its fp32 one, said plainly."""
from __future__ import annotations


def deployment_columns(report: dict) -> dict[str, str]:
    """Latency-report setting (or field) -> column title, in table order."""
    throughput = next(name for name, setting in report["settings"].items() if setting["batch_size"] > 1)
    batch = report["settings"][throughput]["batch_size"]
    return {
        "batch1_1thread": "b1 1 thr ms", "batch1_all_threads": "b1 all ms",
        throughput: f"b{batch} img/s", "size_bytes": "MB", "multiply_adds": "M MACs",
    }


def deployment_cells(model: dict, columns: dict[str, str]) -> list[str]:
    """The latency, throughput, size and multiply-add cells of one timed model."""
    cells = []
    for key in columns:
        if key == "size_bytes":
            cells.append(f"{model[key] / 1e6:.2f}")
        elif key == "multiply_adds":
            cells.append(f"{model[key] / 1e6:.1f}")
        elif key.startswith("batch1"):
            cells.append(f"{model[key]['median_ms']:.3f}")
        else:
            cells.append(f"{model[key]['images_per_second']:.0f}")
    return cells


def int8_notes(latency: dict, accuracy: dict[str, float], students: list[str]) -> list[str]:
    """Per student: int8 against fp32 in accuracy, batch-1 one-thread latency and size, said plainly."""
    notes = []
    for name in students:
        fp32, int8 = latency["models"].get(name), latency["models"].get(f"{name}.int8")
        if fp32 is None or int8 is None:
            continue
        fp32_ms, int8_ms = fp32["batch1_1thread"]["median_ms"], int8["batch1_1thread"]["median_ms"]
        speed = (f"{fp32_ms / int8_ms:.2f}x faster" if int8_ms < fp32_ms else f"{int8_ms / fp32_ms:.2f}x SLOWER on this CPU")
        note = f"{name}.int8 vs fp32: {speed} ({int8_ms:.3f} vs {fp32_ms:.3f} ms, batch 1, 1 thread), " \
               f"{fp32['size_bytes'] / int8['size_bytes']:.1f}x smaller"
        if name in accuracy and f"{name}.int8" in accuracy:
            note += f", accuracy {100 * (accuracy[f'{name}.int8'] - accuracy[name]):+.2f} points"
        notes.append(note)
    return notes
