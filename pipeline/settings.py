"""The whole params.yaml as one model: every section, each student and sweep row merged onto
`train`, and the checks that span sections. Validation reports every bad value at once.

A section a user deleted (e.g. `synth` with real data) is None; a command that needs it says so.
A section that is present is always checked in full.
"""
from __future__ import annotations

import difflib
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.config import ConfigModel, error_line, error_location
from pipeline.data.config import SynthConfig, VerificationConfig
from pipeline.errors import FacekdError
from pipeline.evaluation.config import EvaluateConfig, LatencyConfig, QuantizeConfig, SweepConfig
from pipeline.stage_one.config import EmbedConfig, IndexConfig, MineConfig
from pipeline.stage_two.config import TeacherSection, TrainSection

SWEEPS = ("ablation", "baseline_sweep", "tuning")
# old key -> new key, by section: an old name is an error that names the new one
RENAMED = {
    "embed": {"block_size": "images_per_block"},
    "index": {"block_size": "rows_per_search"},
    "mine": {"block_size": "rows_per_block"},
}


class SettingsError(FacekdError):
    """Bad settings: one line per problem, `section.key: value — what was expected`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Settings(ConfigModel):
    """params.yaml. `students` and each sweep's `rows` hold overrides of `train`, merged onto it."""

    synth: SynthConfig | None = None
    verification: VerificationConfig | None = None
    teacher: TeacherSection | None = None
    embed: EmbedConfig | None = None
    index: IndexConfig | None = None
    mine: MineConfig | None = None
    train: TrainSection | None = None
    students: dict[str, TrainSection] = Field(default_factory=dict, description="Student name -> overrides of `train`.")
    evaluate: EvaluateConfig | None = None
    quantize: QuantizeConfig | None = None
    latency: LatencyConfig | None = None
    ablation: SweepConfig | None = None
    baseline_sweep: SweepConfig | None = None
    tuning: SweepConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _merge_onto_train(cls, values: Any) -> Any:
        """Each student and sweep row becomes `train` with its overrides on top."""
        if not isinstance(values, dict):
            return values
        train = values.get("train") if isinstance(values.get("train"), dict) else {}
        values = dict(values)
        if "students" in values and values["students"] is None:  # `students:` with nothing under it
            values["students"] = {}
        if isinstance(values.get("students"), dict):
            values["students"] = {name: _merged(train, overrides) for name, overrides in values["students"].items()}
        for sweep in SWEEPS:
            section = values.get(sweep)
            if isinstance(section, dict) and isinstance(section.get("rows"), dict):
                rows = {name: _merged(train, overrides) for name, overrides in section["rows"].items()}
                values[sweep] = {**section, "rows": rows}
        return values


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if nested else value
    return merged


def _merged(train: dict[str, Any], overrides: Any) -> Any:
    if overrides is None:
        return dict(train)
    return deep_merge(train, overrides) if isinstance(overrides, dict) else overrides


def validate_settings(values: Any, world_size: int = 1) -> Settings:
    """The `Settings` of a params file's `values` (as YAML loads them), or a `SettingsError` listing
    every problem; `world_size`: the training processes, whose count each batch must divide."""
    if not isinstance(values, dict):
        raise SettingsError([f"{values!r} — expected a mapping of sections at the top level"])
    values, renamed = _without_renamed_keys(values)
    across = _across_sections(values)
    try:
        settings = Settings.model_validate(values, context={"world_size": world_size})
    except ValidationError as error:
        raise SettingsError(renamed + _error_lines(values, error) + across) from None
    if renamed or across:
        raise SettingsError(renamed + across)
    return settings


def _across_sections(values: dict[str, Any]) -> list[str]:
    """Checks that span sections, made on the values as written (defaults where a key is absent), so
    that they are reported together with every other error rather than after those are fixed."""
    index, mine = values.get("index"), values.get("mine")
    if not isinstance(index, dict) or not isinstance(mine, dict):
        return []
    knn_k = index.get("knn_k", IndexConfig.model_fields["knn_k"].default)
    negatives = mine.get("hard_negatives_per_anchor", MineConfig.model_fields["hard_negatives_per_anchor"].default)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (knn_k, negatives)):
        return []  # a wrong type is reported by the section's own check
    if 0 < knn_k < negatives:
        return [
            f"mine.hard_negatives_per_anchor: {negatives!r} — expected at most index.knn_k = {knn_k} "
            "(hard negatives are mined among each image's knn_k nearest neighbours)"
        ]
    return []


def _without_renamed_keys(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`values` without keys that were renamed, and one line for each of them naming the new key."""
    lines = []
    values = dict(values)
    for section, renames in RENAMED.items():
        if not isinstance(values.get(section), dict):
            continue
        kept = dict(values[section])
        for old, new in renames.items():
            if old in kept:
                lines.append(f"{section}.{old}: {kept.pop(old)!r} — {section}.{old} was renamed to {section}.{new}")
        values[section] = kept
    return values, lines


def _error_lines(values: dict[str, Any], error: ValidationError) -> list[str]:
    """One line per problem, each under the key the user wrote: a student's (or sweep row's) error
    is reported under `train` unless that student sets the key itself; duplicates are dropped."""
    lines: list[str] = []
    for item in error.errors():
        location = _user_location(values, error_location(item))
        line = error_line(item, location)
        if item["type"] == "extra_forbidden":
            line += _suggestion(location)
        if line not in lines:
            lines.append(line)
    return lines


def _user_location(values: dict[str, Any], location: tuple[Any, ...]) -> tuple[Any, ...]:
    if location[:1] == ("students",) and len(location) > 2:
        prefix = location[:2]
    elif location[:1] and location[0] in SWEEPS and location[1:2] == ("rows",) and len(location) > 3:
        prefix = location[:3]
    else:
        return location
    overrides: Any = values
    for part in prefix:
        overrides = overrides.get(part) if isinstance(overrides, dict) else None
    key = location[len(prefix):]
    return location if _sets(overrides, key) else ("train", *key)


def _sets(overrides: Any, key: tuple[Any, ...]) -> bool:
    """Whether the mapping `overrides` sets the (nested) `key`, or a value above it."""
    for part in key:
        if not isinstance(overrides, dict) or part not in overrides:
            return False
        overrides = overrides[part]
    return True


def _suggestion(location: tuple[Any, ...]) -> str:
    """`; did you mean ...?` for an unknown key close to a known one of its section."""
    known = _known_keys(Settings, location[:-1])
    close = difflib.get_close_matches(str(location[-1]), known, n=1)
    return f"; did you mean {'.'.join(map(str, (*location[:-1], close[0])))}?" if close else ""


def _known_keys(model: Any, location: tuple[Any, ...]) -> list[str]:
    """The keys of the model found at `location` inside `model` (a dict's name parts skipped)."""
    parts = iter(location)
    for part in parts:
        model = _model_type(model.model_fields[part].annotation) if part in model.model_fields else None
        if model is None:
            return []
        if get_origin(model) is dict:
            model = _model_type(get_args(model)[1])
            next(parts, None)  # the name of the student or row
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_type(annotation: Any) -> Any:
    """`X` of `X | None`; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        return next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation
