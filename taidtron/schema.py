"""Nested dicts into dataclass trees, each value checked against its field's type: the one reader behind the
experiment config (YAML + command line, `taidtron.config`) and checkpoint metadata (JSON, `taidtron.checkpoint.meta`).

The two differ only in policy, which a `Reader` holds:

    lenient (config)   YAML and command-line values are converted: "true" -> True, "3" -> 3, a scalar -> [scalar];
                       a field may be left out (it keeps its default)
    strict (metadata)  JSON values must already have the field's type (an int for int, a number for float, an object
                       for a nested dataclass); every field must be present, except where the class lists the fields
                       a record must hold in `RECORDED_FIELDS` (fields added later take their defaults)

A dataclass with an `InitVar` named `role` is told the key it was read under (`student`, `teacher`), so its own
validation names the key the user wrote. Errors come from the reader's `error(where, problem)`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

_NULL_WORDS = ("none", "null", "~")
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}


@dataclass(frozen=True)
class Reader:
    error: Callable[[str, str], Exception]
    """Builds the exception for a bad value: (dotted key, what is wrong with it)."""
    strict: bool
    """JSON records (True) or YAML / command-line config (False); see the module docstring."""
    unknown: Callable[[str, list[str], list[str]], Exception] | None = None
    """Builds the exception for keys the dataclass lacks: (where, unknown keys, valid keys); None: `error`."""

    def build(self, cls: type, values: dict, where: str = "") -> Any:
        """`cls(**values)`, every value read against its field's annotation, nested dataclasses included."""
        hints = get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = f"{where}." if where else ""
        unknown = sorted(set(values) - set(names))
        if unknown:
            if self.unknown is not None:
                raise self.unknown(where, [prefix + k for k in unknown], sorted(names))
            raise self.error(prefix + unknown[0], "is not a field of this format")
        if self.strict:
            missing = [n for n in getattr(cls, "RECORDED_FIELDS", names) if n not in values]
            if missing:
                raise self.error(prefix + missing[0], "is missing")
        kwargs = {name: self.read(value, hints[name], prefix + name) for name, value in values.items()}
        if "role" in hints and isinstance(hints["role"], dataclasses.InitVar):
            kwargs["role"] = where
        if not self.strict:
            return cls(**kwargs)  # the config's own validation raises its own one-line errors
        try:
            return cls(**kwargs)
        except ValueError as exc:  # the record's own validation (ModelConfig, WeightsSource.kind)
            raise self.error(where or "the root", f"is invalid ({exc})") from None

    def read(self, value: Any, annotation: Any, where: str) -> Any:
        """One value against its annotation."""
        origin, args = get_origin(annotation), get_args(annotation)
        if origin in (Union, types.UnionType) and type(None) in args:  # X | None
            if value is None or (not self.strict and isinstance(value, str) and value.lower() in _NULL_WORDS):
                return None
            (annotation,) = [a for a in args if a is not type(None)]
            origin, args = get_origin(annotation), get_args(annotation)
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                if self.strict:
                    raise self.error(where, f"must be an object, got {type(value).__name__} {value!r:.80}")
                raise self.error(where, f"must be a mapping, got {value!r}")
            return self.build(annotation, value, where)
        if annotation is Any:
            return value
        return (self._strict_leaf if self.strict else self._lenient_leaf)(value, origin or annotation, args, where)

    def _strict_leaf(self, value: Any, expected: Any, args: tuple, where: str) -> Any:
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, expected)
        if not ok:
            name = _TYPE_NAMES.get(expected, str(expected))
            raise self.error(where, f"must be {name}, got {type(value).__name__} {value!r:.80}")
        if expected is dict and args:
            _, value_type = args
            for key, item in value.items():
                self.read(item, value_type, f"{where}.{key}")
        return value

    def _lenient_leaf(self, value: Any, expected: Any, args: tuple, where: str) -> Any:
        if expected is list:
            if isinstance(value, str):  # one item written without brackets: data.blend=data/my_corpus_text_document
                value = [value]
            if not isinstance(value, list):
                raise self.error(where, f"must be a list such as [a, b], got {value!r}")
            return list(value)
        if expected is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise self.error(where, f"must be true or false, got {value!r}")
        if expected in (int, float, str):
            if expected is int and isinstance(value, float) and not value.is_integer():
                raise self.error(where, f"must be an integer, got {value!r}")
            if expected in (int, float) and isinstance(value, bool):  # int(True) would pass silently
                raise self.error(where, f"must be a number, got {value!r}")
            if expected is str and isinstance(value, (dict, list)):
                raise self.error(where, f"must be a string, got {value!r}")
            try:
                return expected(value)
            except (TypeError, ValueError):
                raise self.error(where, f"must be of type {expected.__name__}, got {value!r}") from None
        return value
