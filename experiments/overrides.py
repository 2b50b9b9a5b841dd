"""Dotted `key=value` overrides of any field of a nested dataclass config."""

import dataclasses
import json
import types
import typing


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
    if isinstance(hint, type) and not isinstance(parsed, hint):
        raise ValueError(f"expected {hint.__name__}, got {value!r}")
    return parsed


def apply(cfg, assignments: list[str]):
    """Return a copy of cfg with each 'a.b.c=value' applied; unknown keys list the valid ones."""
    cfg = dataclasses.replace(cfg)
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} must look like section.field=value")
        key, value = assignment.split("=", 1)
        *path, last = key.split(".")
        node = cfg
        for part in path:
            fields = {f.name for f in dataclasses.fields(node)}
            if part not in fields:
                raise ValueError(
                    f"unknown config section {part!r} in {key!r}; valid: {sorted(fields)}"
                )
            child = dataclasses.replace(getattr(node, part))
            setattr(node, part, child)
            node = child
        hints = typing.get_type_hints(type(node))
        if last not in hints:
            raise ValueError(f"unknown config field {last!r} in {key!r}; valid: {sorted(hints)}")
        try:
            setattr(node, last, _coerce(value, getattr(node, last), hints[last]))
        except ValueError as err:
            raise ValueError(f"override {assignment!r}: {err}") from err
    return cfg
