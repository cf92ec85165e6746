"""The base of every settings schema: unknown keys are errors, and a library caller who builds a
config with a bad value gets a `FacekdError` naming each bad field, as a params.yaml user does."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import FacekdError


class InvalidSetting(ValueError):
    """A check across fields, raised by a model validator, that names the field at fault.

    pydantic places a model validator's error at the model, not at a field; the error report
    (`describe_errors`) moves it to `key`.
    """

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"{key} is {value!r}; {expected}")
        self.key, self.value, self.expected = key, value, expected


class _ConfigMeta(type(BaseModel)):  # pydantic's model metaclass
    """Turns a failed direct construction, `TrainConfig(...)`, into a `FacekdError`.

    Here and not in `__init__`: pydantic calls a custom `__init__` for nested models too, which
    would stop a whole file's validation at its first error; the metaclass runs only for direct calls.
    """

    def __call__(cls, *args: Any, **values: Any) -> Any:
        try:
            return super().__call__(*args, **values)
        except ValidationError as error:
            raise FacekdError(f"{cls.__name__}: " + "; ".join(describe_errors(error))) from None


# The most worker processes or threads a setting may ask for: more is a typo (a huge value would try
# to start that many processes), not a machine.
MOST_PROCESSES = 1024


class ConfigModel(BaseModel, metaclass=_ConfigMeta):
    """Frozen, no unknown keys, strict types; direct construction raises `FacekdError` instead of pydantic's error.

    Strict: YAML gives each value its type, and `epochs: true`, `compile: "yes"` or `seed: 1.5` are
    mistakes to report, not values to convert (an integer is still accepted where a float is expected).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def error_location(error: dict[str, Any]) -> tuple[Any, ...]:
    """Where an error belongs: its location, plus the field an `InvalidSetting` names."""
    cause = (error.get("ctx") or {}).get("error")
    return (*error["loc"], cause.key) if isinstance(cause, InvalidSetting) else tuple(error["loc"])


def error_line(error: dict[str, Any], location: tuple[Any, ...]) -> str:
    """`key.path: value — what was expected` for one of `ValidationError.errors()`."""
    where = ".".join(str(part) for part in location)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidSetting):
        return f"{where}: {cause.value!r} — {cause.expected}"
    if error["type"] == "missing":
        return f"{where}: missing — expected a value"
    if error["type"] == "extra_forbidden":
        return f"{where}: {error['input']!r} — unknown key"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}: {error['input']!r} — expected a mapping of keys to values"
    if error["type"] in ("string_too_short", "too_short"):
        least = error["ctx"]["min_length"]
        unit = "character" if error["type"] == "string_too_short" else "item"
        return f"{where}: {error['input']!r} — expected at least {least} {unit}{'s' if least != 1 else ''}"
    message = error["msg"]
    for prefix, replacement in (("Input should be ", "expected "), ("Value error, ", ""), ("Assertion failed, ", "")):
        if message.startswith(prefix):
            message = replacement + message[len(prefix):]
    return f"{where}: {error['input']!r} — {message}"


def describe_errors(error: ValidationError) -> list[str]:
    """One line per bad field of a validation error, in the order pydantic found them."""
    return [error_line(item, error_location(item)) for item in error.errors()]
