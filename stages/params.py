"""Reading params.yaml: YAML with numbers as YAML 1.2 reads them, validated whole, once per command.

Every problem of the file is reported at once, before any work, one per line:
`params.yaml: section.key: value — what was expected`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import FacekdError
from pipeline.settings import Settings, SettingsError, validate_settings
from pipeline.stage_two.config import TrainSection


class _Loader(yaml.SafeLoader):
    """`safe_load`, but `1e-4` and `-1E3` are floats (YAML 1.1 wants a dot: `1.0e-4`; PyYAML reads `1e-4` as text)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# appended after the int resolver, which is tried first: `10` stays an integer
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def read_params(path: str | Path) -> dict[str, Any]:
    """The params file at `path` as YAML loads it (a mapping of sections)."""
    path = Path(path)
    if not path.is_file():
        raise FacekdError(f"{path}: parameters file not found")
    try:
        values = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise FacekdError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise FacekdError(f"{path}: expected a mapping of sections at the top level")
    return values


def load_settings(path: str | Path) -> Settings:
    """The validated settings of the params file at `path`; every problem at once, each naming the file."""
    try:
        return validate_settings(read_params(path), world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except SettingsError as error:
        raise FacekdError("\n".join(f"{path}: {line}" for line in error.lines)) from None


def required(settings: Settings, path: str | Path, *names: str) -> Any:
    """The sections `names` of `settings` (one, or a tuple); a missing one is an error naming the file."""
    missing = [name for name in names if getattr(settings, name) is None]
    if missing:
        raise FacekdError(f"{path}: section {', '.join(repr(name) for name in missing)} is missing; this command needs it")
    sections = tuple(getattr(settings, name) for name in names)
    return sections[0] if len(sections) == 1 else sections


def student(settings: Settings, path: str | Path, name: str) -> TrainSection:
    """Student `name` (`train` with its overrides)."""
    required(settings, path, "train")
    if name not in settings.students:
        known = ", ".join(settings.students) or "none"
        raise FacekdError(f"{path}: students has no student {name!r} (known: {known})")
    return settings.students[name]
