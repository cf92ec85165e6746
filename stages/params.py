"""Reading one section of params.yaml, with errors that name the file and the key."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.errors import FacekdError

if TYPE_CHECKING:
    from pipeline.face_model import Preprocessing

MISSING = object()
DEVICES = ("auto", "cpu", "cuda")


class Section:
    """One top-level section of a params file; every read key is type-checked."""

    def __init__(self, path: Path, name: str, values: dict[str, Any]) -> None:
        self.path = path
        self.name = name
        self.values = values

    def where(self, key: str) -> str:
        return f"{self.path}: {self.name}.{key}"

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = MISSING) -> Any:
        """The value of `key`, checked against `kind`; `default` when absent (else an error)."""
        if key not in self.values:
            if default is MISSING:
                raise FacekdError(f"{self.where(key)} is missing")
            return default
        value = self.values[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise FacekdError(f"{self.where(key)} is {value!r}; expected {expected}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = MISSING) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise FacekdError(f"{self.where(key)} is {value!r}; expected one of {', '.join(choices)}")
        return value

    def positive(self, key: str, kind: type = int, default: Any = MISSING) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise FacekdError(f"{self.where(key)} is {value!r}; expected a positive {kind.__name__}")
        return value

    def sub(self, key: str) -> "Section":
        values = self.get(key, dict)
        return Section(self.path, f"{self.name}.{key}", values)


def load_params(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FacekdError(f"{path}: parameters file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise FacekdError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise FacekdError(f"{path}: expected a mapping of sections at the top level")
    return values


def load_section(path: str | Path, name: str) -> Section:
    """The section `name` of the params file at `path`."""
    values = load_params(path)
    if name not in values or not isinstance(values[name], dict):
        raise FacekdError(f"{path}: section '{name}' is missing or not a mapping")
    return Section(Path(path), name, values[name])


def preprocessing_from(section: Section) -> "Preprocessing":
    """A teacher's `Preprocessing` from a section with channel_order, mean and std."""
    from pipeline.face_model import Preprocessing

    return Preprocessing(
        section.choice("channel_order", ("rgb", "bgr")), section.get("mean", float), section.positive("std", float)
    )
