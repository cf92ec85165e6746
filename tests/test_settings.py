"""params.yaml is validated whole, once, before any work: every bad value is reported at once, as
`FILE: section.key: value — what was expected`, and the schema holds the only defaults."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.data.config import SynthConfig, VerificationConfig
from pipeline.evaluation.config import EvaluateConfig, LatencyConfig, QuantizeConfig
from pipeline.settings import Settings, SettingsError, validate_settings
from pipeline.stage_one.config import EmbedConfig, IndexConfig, MineConfig
from pipeline.stage_two.config import TeacherSection, TrainConfig, TrainSection
from pipeline.stage_two.models import BACKBONE_NAMES
from stages.cli import cli
from stages.params import load_settings

REPO = Path(__file__).parents[1]
SECTIONS = {
    "synth": SynthConfig, "verification": VerificationConfig, "teacher": TeacherSection, "embed": EmbedConfig,
    "index": IndexConfig, "mine": MineConfig, "train": TrainSection, "evaluate": EvaluateConfig,
    "quantize": QuantizeConfig, "latency": LatencyConfig,
}


def shipped() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write(tmp_path: Path, values: dict) -> Path:
    """`values` as a params file whose outputs all lie under `tmp_path` (so a test sees any work done)."""
    values["embed"].update(dataset=str(tmp_path / "faces"), store=str(tmp_path / "store.h5"))
    values["index"].update(store=str(tmp_path / "store.h5"), out=str(tmp_path / "index.faiss"), knn=str(tmp_path / "knn.h5"))
    values["mine"].update(store=str(tmp_path / "store.h5"), knn=str(tmp_path / "knn.h5"), out=str(tmp_path / "pairs.h5"))
    values["train"].update(dataset=str(tmp_path / "faces"), out_root=str(tmp_path / "students"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def facekd(*arguments: str) -> tuple[int, list[str]]:
    """Exit status and the lines of the error message of a `facekd` command."""
    result = CliRunner().invoke(cli, list(arguments))
    assert "Traceback" not in result.output
    return result.exit_code, result.output.removeprefix("Error: ").splitlines()


def test_shipped_params_validate_and_equal_the_schema_defaults() -> None:
    settings = validate_settings(shipped())
    for name, schema in SECTIONS.items():
        assert getattr(settings, name) == schema(), name
    assert settings.students["margin_only"] == settings.train
    assert settings.students["unified"].distillation.iled == 20.0
    assert {row.sampler for row in settings.ablation.rows.values()} == {"random", "pairs"}


def test_backbone_names_are_the_models() -> None:
    assert set(TrainConfig.model_fields["backbone"].annotation.__args__) == set(BACKBONE_NAMES)


def test_every_bad_training_value_is_reported_at_once(tmp_path: Path) -> None:
    values = shipped()
    values["train"].update(epochs="ten", batch_size=0, epochz=10, margin_scale=0, seed=-1, num_workers=-1, embedding_dim=0)
    values["train"]["optim"].update(lr=-1, momentum=-1, weight_decay=-1)
    params = write(tmp_path, values)
    status, lines = facekd("train", "--params", str(params), "--student", "margin_only")
    assert status == 1
    expected = {
        "train.epochs: 'ten' — expected a valid integer", "train.batch_size: 0 — expected at least 2",
        "train.epochz: 10 — unknown key; did you mean train.epochs?", "train.margin_scale: 0 — expected greater than 0",
        "train.seed: -1 — expected greater than or equal to 0", "train.num_workers: -1 — expected greater than or equal to 0",
        "train.embedding_dim: 0 — expected greater than 0", "train.optim.lr: -1 — expected a positive finite number",
        "train.optim.momentum: -1 — expected greater than or equal to 0",
        "train.optim.weight_decay: -1 — expected greater than or equal to 0",
    }
    for line in lines:
        assert line.startswith(f"{params}: "), line
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)  # once: not again for each student
    assert not any("students." in line for line in lines), lines
    assert not (tmp_path / "students").exists()


def test_a_students_own_bad_value_is_named_under_the_student(tmp_path: Path) -> None:
    values = shipped()
    values["students"]["unified"].update(batch_size=7, sampler="pairs")
    values["students"]["unified"]["distillation"]["rpsd_bank"] = 4
    status, lines = facekd("train", "--params", str(write(tmp_path, values)), "--student", "margin_only")
    assert status == 1
    assert any("students.unified.distillation.rpsd_bank: 4 — unknown key; did you mean" in line for line in lines), lines
    assert len(lines) == 1, lines  # the pairs check runs once the fields themselves are valid
    del values["students"]["unified"]["distillation"]["rpsd_bank"]
    status, lines = facekd("train", "--params", str(write(tmp_path, values)), "--student", "margin_only")
    assert status == 1 and "students.unified.batch_size: 7 — expected a multiple of 2 x world size (2)" in lines[0], lines


@pytest.mark.parametrize(("section", "key", "value", "command", "expected"), [
    ("synth", "sede", 0, ["synth", "--out", "SYNTH"], "synth.sede: 0 — unknown key; did you mean synth.seed?"),
    ("verification", "num_pair", 20, ["synth", "--out", "SYNTH"], "verification.num_pair: 20 — unknown key; did you mean verification.num_pairs?"),
    ("embed", "dtpye", "float32", ["embed"], "embed.dtpye: 'float32' — unknown key; did you mean embed.dtype?"),
    ("index", "factroy", "HNSW32", ["index"], "index.factroy: 'HNSW32' — unknown key; did you mean index.factory?"),
    ("mine", "suspicious_treshold", 0.5, ["mine"], "mine.suspicious_treshold: 0.5 — unknown key; did you mean mine.suspicious_threshold?"),
    ("evaluate", "fold", 5, ["evaluate", "--onnx", "m.onnx", "--out", "EVAL"], "evaluate.fold: 5 — unknown key; did you mean evaluate.folds?"),
    ("embed", "threads_per_worker", -3, ["embed"], "embed.threads_per_worker: -3 — expected greater than or equal to 0"),
    ("embed", "workers", -1, ["embed"], "embed.workers: -1 — expected greater than or equal to 0"),
    ("index", "knn_k", 0, ["index"], "index.knn_k: 0 — expected greater than 0"),
    ("embed", "block_size", 1024, ["embed"], "embed.block_size: 1024 — embed.block_size was renamed to embed.images_per_block"),
    ("index", "block_size", 16, ["index"], "index.block_size: 16 — index.block_size was renamed to index.rows_per_search"),
    ("mine", "block_size", 16, ["mine"], "mine.block_size: 16 — mine.block_size was renamed to mine.rows_per_block"),
    ("synth", "size", 8, ["synth", "--out", "SYNTH"], "synth.size: 8 — expected greater than or equal to 16"),
])
def test_a_bad_key_or_value_stops_the_command_before_any_work(
    tmp_path: Path, section: str, key: str, value: object, command: list[str], expected: str
) -> None:
    values = shipped()
    values[section][key] = value
    params = write(tmp_path, values)
    command = [str(tmp_path / part.lower()) if part in ("SYNTH", "EVAL") else part for part in command]
    status, lines = facekd(command[0], "--params", str(params), *command[1:])
    assert status == 1 and lines == [f"{params}: {expected}"], lines
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_every_command_validates_the_whole_file(tmp_path: Path) -> None:
    """A typo in a section the command does not read is still reported (a present section is always checked)."""
    values = shipped()
    values["quantize"]["methd"] = "entropy"
    status, lines = facekd("mine", "--params", str(write(tmp_path, values)))
    assert status == 1 and "quantize.methd: 'entropy' — unknown key; did you mean quantize.method?" in lines[0]


def test_hard_negatives_must_fit_in_the_neighbours(tmp_path: Path) -> None:
    values = shipped()
    values["mine"]["hard_negatives_per_anchor"] = 40
    status, lines = facekd("mine", "--params", str(write(tmp_path, values)))
    assert status == 1 and "mine.hard_negatives_per_anchor: 40 — expected at most index.knn_k = 32" in lines[0], lines


def test_checks_across_sections_are_reported_with_the_other_errors(tmp_path: Path) -> None:
    values = shipped()
    values["mine"]["hard_negatives_per_anchor"] = 40
    values["train"]["epochs"] = 0
    status, lines = facekd("mine", "--params", str(write(tmp_path, values)))
    assert status == 1 and len(lines) == 2, lines
    assert any("train.epochs: 0 — expected greater than 0" in line for line in lines), lines
    assert any("mine.hard_negatives_per_anchor: 40 — expected at most index.knn_k = 32" in line for line in lines), lines


def test_batches_must_divide_over_the_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = shipped()
    values["train"]["batch_size"] = 6
    values["students"]["unified"]["batch_size"] = 12
    monkeypatch.setenv("WORLD_SIZE", "4")
    status, lines = facekd("train", "--params", str(write(tmp_path, values)), "--student", "margin_only")
    assert status == 1
    assert "train.batch_size: 6 — expected at least 2 x world size 4" in lines[0], lines
    assert "students.unified.batch_size: 12 — expected a multiple of 2 x world size (8)" in lines[1], lines


def test_a_command_needs_only_its_own_sections(tmp_path: Path) -> None:
    """Real-data users may delete synth, verification, teacher (and the sweeps); a missing section the
    command reads is named."""
    values = {name: section for name, section in shipped().items() if name in ("embed", "index", "mine", "train")}
    params = write(tmp_path, values)
    status, lines = facekd("embed", "--params", str(params), "--quiet")
    assert status == 1 and "faces" in lines[0] and "section" not in lines[0], lines  # got as far as the dataset
    status, lines = facekd("evaluate", "--params", str(params), "--onnx", "m.onnx", "--out", str(tmp_path / "eval"))
    assert status == 1 and lines == [f"{params}: section 'evaluate' is missing; this command needs it"]


def test_floats_are_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("    lr: 0.4 ", "    lr: 1e-4").replace(
        "    weight_decay: 0.0005", "    weight_decay: 5E-4"))
    settings = load_settings(params)
    assert settings.train.optim.lr == 1e-4 and settings.teacher.optim.lr == 1e-4
    assert settings.train.optim.weight_decay == 5e-4 and settings.train.epochs == 10


def test_the_ablation_reads_the_params_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stages.params

    reads = []
    read_params = stages.params.read_params
    monkeypatch.setattr(stages.params, "read_params", lambda path: reads.append(path) or read_params(path))
    status, lines = facekd("ablation", "--params", str(write(tmp_path, shipped())), "--quiet")
    assert status == 1 and "faces" in lines[0], lines  # stopped at the missing training images
    assert len(reads) == 1


def test_library_callers_get_a_facekd_error_naming_every_bad_field() -> None:
    from pipeline.errors import FacekdError

    with pytest.raises(FacekdError, match=r"TrainConfig: epochs: 0 — expected greater than 0; optim\.lr: 0 — expected a positive"):
        TrainConfig(epochs=0, optim={"lr": 0})
    with pytest.raises(SettingsError, match="expected a mapping of sections"):
        validate_settings(["train"])
    assert Settings().train is None


def test_values_of_the_wrong_type_are_reported_not_converted(tmp_path: Path) -> None:
    values = shipped()
    values["train"].update(epochs=True, compile="yes", seed=1.5)
    values["index"]["factory"] = ""
    values["ablation"]["seeds"] = []
    values["train"]["optim"]["lr"] = 1  # an integer where a float is expected is fine
    status, lines = facekd("embed", "--params", str(write(tmp_path, values)))
    assert status == 1
    expected = [
        "train.epochs: True — expected a valid integer", "train.compile: 'yes' — expected a valid boolean",
        "train.seed: 1.5 — expected a valid integer", "index.factory: '' — expected at least 1 character",
        "ablation.seeds: [] — expected at least 1 item",
    ]
    assert len(lines) == len(expected), lines
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)


def test_a_huge_process_count_is_refused(tmp_path: Path) -> None:
    values = shipped()
    values["embed"]["workers"] = 10**22
    status, lines = facekd("embed", "--params", str(write(tmp_path, values)))
    assert status == 1 and lines == [f"{tmp_path / 'params.yaml'}: embed.workers: {10**22} — expected less than or equal to 1024"], lines
