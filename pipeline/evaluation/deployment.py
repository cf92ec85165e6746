"""The deployment side of `facekd results`: which latency-report columns to show, their cells, and
each student against the teacher and its int8 model against its fp32 one, said plainly."""
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


def deployment_notes(latency: dict, accuracy: dict[str, float], students: list[str]) -> list[str]:
    """Per student: against the teacher, then its int8 model against itself (accuracy, batch-1 one-thread
    latency, size), said plainly: what a user deploying the student gains and loses."""
    notes = []
    for name in students:
        notes.append(_versus(latency, accuracy, name, "teacher", "teacher"))
        notes.append(_versus(latency, accuracy, f"{name}.int8", name, "fp32"))
    return [note for note in notes if note is not None]


def _versus(latency: dict, accuracy: dict[str, float], name: str, baseline: str, baseline_label: str) -> str | None:
    """One model against another; None when either was not timed."""
    model, reference = latency["models"].get(name), latency["models"].get(baseline)
    if model is None or reference is None:
        return None
    model_ms, reference_ms = model["batch1_1thread"]["median_ms"], reference["batch1_1thread"]["median_ms"]
    speed = (f"{reference_ms / model_ms:.2f}x faster" if model_ms < reference_ms
             else f"{model_ms / reference_ms:.2f}x SLOWER on this CPU")
    note = f"{name} vs {baseline_label}: {speed} ({model_ms:.3f} vs {reference_ms:.3f} ms, batch 1, 1 thread), " \
           f"{reference['size_bytes'] / model['size_bytes']:.1f}x smaller"
    if name in accuracy and baseline in accuracy:
        note += f", accuracy {100 * (accuracy[name] - accuracy[baseline]):+.2f} points"
    return note
