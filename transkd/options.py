"""One converter for every user-settable option: config sections, method, dataset and protocol options.

Each option is declared once, as a typed field with a default: a field of a dataclass (a config
section, a method's ``Options``, :class:`~transkd.data.protocols.ProtocolOptions`) or a typed
keyword of a dataset's constructor. :func:`convert` checks names and types with pydantic and
turns its first error into one sentence that names the full dotted key, what was expected and
what was given, and suggests the closest valid name for an unknown key. A schema's
``validate()`` method then checks ranges; its ``ValueError`` starts with the field's name
("tau must be ...") and is named the same way.

Option values are YAML data (mappings, lists, strings, numbers, booleans, null), which is JSON
data, so they are validated in pydantic's strict JSON mode: an integer takes ``3`` but not ``3.0``
or ``"3"``, a number takes ``3`` or ``0.5`` (finite only), a boolean only ``true``/``false``, and a
list fills a tuple.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pydantic

from .errors import ConfigError

T = TypeVar("T")

_SETTINGS = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class Keys:
    """How errors name the keys of one schema: ``config key 'distill.options.kd.tau'``."""

    #: Dotted path of the schema with a trailing dot, joined to every key.
    prefix: str = ""
    #: What a key is called: ``config key``, ``option``, ``protocol option``.
    noun: str = "config key"
    #: Said after the key, e.g. `` for method 'kd'``.
    owner: str = ""

    def name(self, path: str) -> str:
        """``config key 'optim.lr'``; the empty path names the schema itself."""
        full = (self.prefix + path) if path else self.prefix.rstrip(".")
        return f"{self.noun} {full!r}{self.owner}" if full else f"the {self.noun}s{self.owner}"

    def child(self, part: str) -> Keys:
        return dataclasses.replace(self, prefix=f"{self.prefix}{part}.")


def convert(schema: type[T], data: Any, keys: Keys = Keys(), check: bool = True) -> T:
    """``schema(**data)`` with every name and type checked, then its ``validate()`` (if ``check``).

    ``None`` counts as an empty mapping (a YAML section with nothing under it)."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{keys.name('')} must be a section (a mapping), got {data!r}")
    try:
        text = json.dumps({"value": data}, default=str)
    except (TypeError, ValueError):
        raise ConfigError(f"{keys.name('')} must have string keys, got {dict(data)!r}") from None
    try:
        value = _adapter(schema).validate_json(text, strict=True).value
    except pydantic.ValidationError as exc:
        raise _sentence(exc.errors()[0], schema, data, keys) from None
    if check:
        check_ranges(value, keys)
    return value


def check_ranges(value: Any, keys: Keys = Keys()) -> None:
    """Run ``value.validate()`` (if it has one); its ``ValueError`` becomes a ConfigError naming
    the key its message starts with."""
    validate = getattr(value, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except ConfigError:
        raise
    except ValueError as exc:
        raise range_error(str(exc), _field_names(type(value)), keys) from None


def range_error(text: str, names: list[str], keys: Keys) -> ConfigError:
    """``"tau must be positive"`` → ``config key 'distill.options.tau' must be positive``."""
    match = re.match(r"(?:[\w ]*option )?'?(\w+)'? (.*)", text, re.S)
    if match and match.group(1) in names:
        return ConfigError(f"{keys.name(match.group(1))} {match.group(2)}")
    return ConfigError(f"{keys.name('')}: {text}")


def unknown_key(key: str, names: list[str], keys: Keys) -> ConfigError:
    """An unknown name, with the closest valid one (or the valid ones when none is close)."""
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        hint = f"; did you mean {keys.prefix + close[0]!r}?"
    else:
        where, listing = keys.prefix.rstrip("."), ", ".join(names) or "(none)"
        hint = f"; keys of {where}: {listing}" if where else f"; known {keys.noun}s: {listing}"
    return ConfigError(f"unknown {keys.name(key)}{hint}")


def describe(hint: Any) -> str:
    """What a type hint accepts, in words: ``an integer or null``, ``a list of 2 numbers``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(describe(a) for a in args if a is not type(None))
        return text + " or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} {_plural(describe(args[0]))}"
    if origin in (tuple, list, collections.abc.Sequence, collections.abc.Iterable):
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if origin in (dict, collections.abc.Mapping) or dataclasses.is_dataclass(hint):
        return "a section (a mapping)" if dataclasses.is_dataclass(hint) else "a mapping"
    if hint is os.PathLike:
        return "a path"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(text: str) -> str:
    return {"an integer": "integers", "a number": "numbers", "a string": "strings",
            "true or false": "booleans"}.get(text, text)


@functools.cache
def _adapter(schema: type) -> pydantic.TypeAdapter:
    """A wrapper model carries the settings, which reach the (plain) dataclasses inside it."""
    model = pydantic.create_model(f"{schema.__name__}Input", __config__=_SETTINGS, value=(schema, ...))
    return pydantic.TypeAdapter(model)


def _field_names(schema: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(schema) if f.init] if dataclasses.is_dataclass(schema) \
        else []


def _unwrap(hint: Any) -> Any:
    """``X | None`` → ``X``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def _resolve(schema: type, data: Any, loc: tuple) -> tuple[str, Any, Any]:
    """Follow an error's location through the schema and the data as far as both go:
    (dotted path, type hint, given value)."""
    path, hint, value = "", schema, data
    for part in loc:
        inner = _unwrap(hint)
        origin, args = typing.get_origin(inner), typing.get_args(inner)
        if dataclasses.is_dataclass(inner) and isinstance(value, Mapping) and part in value \
                and part in _field_names(inner):
            hint, value = typing.get_type_hints(inner)[part], value[part]
            path = f"{path}.{part}" if path else str(part)
        elif origin is dict and isinstance(value, Mapping) and part in value:
            hint, value = (args[1] if len(args) == 2 else Any), value[part]
            path = f"{path}.{part}"
        elif isinstance(part, int) and isinstance(value, (list, tuple)) and 0 <= part < len(value) \
                and origin in (tuple, list, collections.abc.Sequence):
            fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
            hint = (args[part] if fixed else args[0]) if args else Any
            value = value[part]
            path = f"{path}[{part}]"
        else:
            break
    return path, hint, value


def _sentence(error: Mapping[str, Any], schema: type, data: Any, keys: Keys) -> ConfigError:
    loc = tuple(error["loc"])[1:]  # drop the wrapper's "value"
    if error["type"] == "unexpected_keyword_argument" and loc:
        path, hint, _ = _resolve(schema, data, loc[:-1])
        parent = keys.child(path) if path else keys
        return unknown_key(str(loc[-1]), _field_names(_unwrap(hint)), parent)
    path, hint, value = _resolve(schema, data, loc)
    if error["type"] == "value_error":  # raised by a dataclass's own __post_init__
        return range_error(str(error["ctx"]["error"]), _field_names(_unwrap(hint)), keys.child(path)
                           if path else keys)
    if error["type"] == "finite_number":
        return ConfigError(f"{keys.name(path)} must be a finite number, got {value!r}")
    if error["type"] == "missing" and not path:
        return ConfigError(f"{keys.name(str(loc[-1]))} is required")
    return ConfigError(f"{keys.name(path)} must be {describe(hint)}, got {value!r}")
