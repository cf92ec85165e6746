"""The ablation table: mean ± sample std over seeds, in %, next to the teacher's numbers."""
from pipeline.evaluation.ablation import RowResult, markdown_table


def metrics(accuracy: float, tar2: float | None, tar3: float | None) -> dict:
    return {"accuracy": accuracy, "tar_at_far_0.01": tar2, "tar_at_far_0.001": tar3}


def test_table_shows_mean_and_sample_std_per_row_and_the_teacher() -> None:
    rows = [
        RowResult("margin_only", {0: metrics(0.80, 0.30, 0.10), 1: metrics(0.84, 0.34, None), 2: metrics(0.82, 0.32, 0.20)}),
        RowResult("iled", {0: metrics(0.9, 0.5, 0.25)}),
    ]
    table = markdown_table(rows, metrics(0.93, 0.7, None), "heldout").splitlines()
    assert table[0].startswith("| setting (heldout) | seeds | accuracy %")
    assert table[2] == "| teacher | - | 93.00 | 70.00 | - | - |"
    # accuracy 80, 84, 82: mean 82, sample std 2; TAR@1e-3 has two values (10, 20): std 7.07
    assert table[3] == "| margin_only | 3 | 82.00 ± 2.00 | 32.00 ± 2.00 | 15.00 ± 7.07 | 80.00, 84.00, 82.00 |"
    assert table[4] == "| iled | 1 | 90.00 | 50.00 | 25.00 | 90.00 |"  # one seed: no spread to show
