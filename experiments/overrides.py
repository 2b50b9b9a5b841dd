"""Dotted `key=value` overrides of any field of a nested dataclass config."""

import dataclasses
import json
import types
import typing


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and what was expected."""


def _coerce(value: str, current, hint):
    if value.lower() in ("none", "null"):
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = kinds[0]
    if hint is float and isinstance(parsed, int | float):
        return float(parsed)
    if hint is str:
        return value
    wrong = isinstance(hint, type) and not isinstance(parsed, hint)
    if wrong or (hint is int and isinstance(parsed, bool)):
        raise ConfigError(f"expected {hint.__name__}, got {value!r}")
    return parsed


def apply(cfg, assignments: list[str]):
    """Return a copy of cfg with each 'a.b.c=value' applied; unknown keys list the valid ones."""
    cfg = dataclasses.replace(cfg)
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} must look like section.field=value")
        key, value = assignment.split("=", 1)
        *path, last = key.split(".")
        node = cfg
        for part in path:
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{key!r}: {part!r} is inside a setting, not a config section")
            fields = {f.name for f in dataclasses.fields(node)}
            if part not in fields:
                raise ConfigError(
                    f"unknown config section {part!r} in {key!r}; valid: {sorted(fields)}"
                )
            child = dataclasses.replace(getattr(node, part))
            setattr(node, part, child)
            node = child
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{key!r}: {path[-1]!r} is a setting, not a config section")
        hints = typing.get_type_hints(type(node))
        if last not in hints:
            raise ConfigError(f"unknown config field {last!r} in {key!r}; valid: {sorted(hints)}")
        try:
            setattr(node, last, _coerce(value, getattr(node, last), hints[last]))
        except (ValueError, TypeError) as err:  # a dataclass's own check, or a bad value
            raise ConfigError(f"override {assignment!r}: {err}") from err
    return cfg
