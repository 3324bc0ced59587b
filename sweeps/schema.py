"""Build typed config dataclasses from plain YAML mappings, collecting every problem at once.

Checks, per field: unknown keys (with a did-you-mean), the declared type, Literal choices and
the numeric bounds in field metadata (`ge`, `gt`, `lt`, `le`). Numbers written as strings (PyYAML
reads `1e-4` as a string, YAML 1.1) are accepted as floats.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from trainer.config import ConfigProblem

_MISSING = object()


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else "remove it"


def build(cls: type, data: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Return `cls(**data)` with each field converted; append every problem found to `problems`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(ConfigProblem(path or "the spec", "must be a mapping", data, f"keys of {cls.__name__}",
                                      f"write {path or 'the file'} as indented `key: value` lines"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(ConfigProblem(_join(path, key), "unknown key", key,
                                          ", ".join(sorted(fields)), did_you_mean(str(key), fields)))
    values = {}
    for name, spec in fields.items():
        if name in data:
            value = convert(hints[name], data[name], _join(path, name), problems)
            if value is not _MISSING:
                values[name] = _check_bounds(spec, value, _join(path, name), problems)
    return cls(**{k: v for k, v in values.items() if v is not _MISSING})


def convert(hint: Any, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Convert one YAML value to `hint`; on failure record a problem and return _MISSING."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert_union([a for a in args if a is not type(None)], value, path, problems)
    if origin is Literal:
        if value in args:
            return value
        return _fail(problems, path, "must be one of the listed choices", value, " | ".join(map(str, args)),
                     did_you_mean(str(value), map(str, args)))
    if origin is list:
        if not isinstance(value, list):
            return _fail(problems, path, "must be a list", value, f"a YAML list of {_name(args[0])}")
        items = [convert(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return _MISSING if _MISSING in items else items
    if origin is dict:
        if not isinstance(value, dict):
            return _fail(problems, path, "must be a mapping", value, f"name: {_name(args[1])} pairs")
        out = {str(k): convert(args[1], v, _join(path, str(k)), problems) for k, v in value.items()}
        return _MISSING if _MISSING in out.values() else out
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path, problems)
    return _convert_scalar(hint, value, path, problems)


def _convert_union(options: list, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    for option in options:
        trial: list[ConfigProblem] = []
        converted = convert(option, value, path, trial)
        if not trial:
            return converted
    if len(options) == 1:
        return convert(options[0], value, path, problems)
    allowed = " or ".join(_name(o) for o in options)
    return _fail(problems, path, "has the wrong type", value, allowed, f"write {allowed} instead")


def _convert_scalar(hint: Any, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        return _fail(problems, path, "must be a boolean", value, "true | false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return _fail(problems, path, "must be an integer", value, "a whole number such as 8",
                     f"write {int(value)}" if isinstance(value, float) and value.is_integer() else "")
    if hint is float:
        return _to_float(value, path, problems)
    if hint is str:
        if isinstance(value, str):
            return value
        return _fail(problems, path, "must be a string", value, "text (quote it in YAML)")
    raise TypeError(f"schema cannot convert to {hint!r}")


def _to_float(value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    return _fail(problems, path, "must be a number", value, "a number such as 2e-4 or 0.0002")


def _check_bounds(spec: dataclasses.Field, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    meta = spec.metadata
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    failed = [(op, bound) for op, bound in meta.items()
              if (op == "ge" and value < bound) or (op == "gt" and value <= bound)
              or (op == "lt" and value >= bound) or (op == "le" and value > bound)]
    if not failed:
        return value
    words = {"ge": ">=", "gt": ">", "lt": "<", "le": "<="}
    allowed = " and ".join(f"{words[op]} {bound}" for op, bound in meta.items() if op in words)
    return _fail(problems, path, f"must be {allowed}", value, f"a value {allowed}")


def _fail(problems: list[ConfigProblem], path: str, invariant: str, given: Any, allowed: str,
          fix: str = "") -> Any:
    problems.append(ConfigProblem(path, invariant, given, allowed, fix))
    return _MISSING


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def field_hint(cls: type, dotted: str) -> tuple[Any, dataclasses.Field] | None:
    """The type hint and field of a dotted path such as `lora.rank`, or None when there is none."""
    head, _, rest = dotted.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if head not in fields:
        return None
    hint = typing.get_type_hints(cls)[head]
    if not rest:
        return hint, fields[head]
    return field_hint(hint, rest) if dataclasses.is_dataclass(hint) else None


def leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf path of a config dataclass, for did-you-mean on grid keys."""
    out = []
    for spec in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[spec.name]
        name = _join(prefix, spec.name)
        out.extend(leaf_paths(hint, name) if dataclasses.is_dataclass(hint) else [name])
    return out


def check_value(cls: type, dotted: str, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Convert and bound-check one value destined for `cls` at the dotted path."""
    hint, spec = field_hint(cls, dotted)
    converted = convert(hint, value, path, problems)
    return converted if converted is _MISSING else _check_bounds(spec, converted, path, problems)


def is_missing(value: Any) -> bool:
    return value is _MISSING


def is_integer_setting(cls: type, dotted: str) -> bool:
    """Is the setting at `dotted` an integer, or an optional one (`int | None`)?"""
    found = field_hint(cls, dotted)
    if found is None:
        return False
    hint = found[0]
    return hint is int or set(typing.get_args(hint)) == {int, type(None)}
