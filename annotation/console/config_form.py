"""The console's start-a-run form, generated from a recipe's config dataclass: one input per
field with its default and its help text (the trailing ``# comment`` on the field in
``training/config.py``), and the submitted values turned back into a config of the fields
that differ from their defaults. No Django here; torch-free (``training.config``)."""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import MISSING, dataclass, fields
from functools import cache

HIDDEN = frozenset({"model"})  # a run trains its base version: the service refuses "model"
PREFIX = "cfg-"  # form field names: cfg-<config key>


@dataclass(frozen=True)
class ConfigField:
    name: str
    type: str  # "bool" | "int" | "float" | "str" | "tuple"
    default: str  # as shown and as compared with the submitted value
    help: str
    value: str = ""  # what the form shows (the default unless submitted otherwise)
    error: str = ""


def _comments(cls: type) -> dict[str, str]:
    """``{field: trailing comment}`` for the annotated fields written in ``cls`` itself."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            lines[tok.start[0]] = tok.string.lstrip("#").strip()
    node = ast.parse(source).body[0]
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.end_lineno in lines:
            out[stmt.target.id] = lines[stmt.end_lineno]
    return out


@cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's help text; a subclass that overrides a default without a comment keeps its
    base class's help."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update({k: v for k, v in _comments(klass).items() if v})
    return out


def _kind(default) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (int, float, str, tuple)):
        return type(default).__name__
    return "str"


def show(value) -> str:
    """A config value as the form and the pages write it: ``1e-06``, ``true``, ``q_proj, v_proj``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ", ".join(show(v) for v in value)
    return str(value)


def config_fields(cls: type, *, values: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> list[ConfigField]:
    """The form's fields for config class ``cls`` in declaration order, showing ``values``
    (submitted strings) where given and ``errors`` next to their field."""
    values, errors, helps = values or {}, errors or {}, field_help(cls)
    own = cls.__dict__.get("__annotations__", {})  # the recipe's own fields first, then the shared ones
    out = []
    for f in sorted(fields(cls), key=lambda f: f.name not in own):
        if f.name in HIDDEN:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        shown = show(default)
        out.append(ConfigField(f.name, _kind(default), shown, helps.get(f.name, ""), values.get(f.name, shown), errors.get(f.name, "")))
    return out


def _typed(raw: str, default):
    """The submitted string as the default's type when it parses; else the string itself, so
    that the service's validation names the key and says why."""
    try:
        if isinstance(default, bool):
            return {"true": True, "false": False}.get(raw.lower(), raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            items = [s.strip() for s in raw.split(",") if s.strip()]
            return [_typed(s, default[0]) for s in items] if default else items
    except ValueError:
        return raw
    return raw


def submitted_values(data) -> dict[str, str]:
    """``{key: string}`` of the ``cfg-*`` entries of a POST (any key: unknown ones are kept so
    that the service refuses them by name)."""
    return {k[len(PREFIX):]: str(v).strip() for k, v in data.items() if k.startswith(PREFIX) and k != PREFIX}


def config_from_form(cls: type, values: dict[str, str]) -> dict:
    """The run's config: only the values that differ from their defaults (typed where they
    parse); an empty value means the default; unknown keys pass through as given."""
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cls)}  # type: ignore[misc]
    config = {}
    for key, raw in values.items():
        if key not in defaults:
            config[key] = raw
        elif raw != "" and raw != show(defaults[key]):
            value = _typed(raw, defaults[key])
            if value != (list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]):
                config[key] = value
    return config


_KEYED = re.compile(r"^Invalid \w+ config: (\w+)\b")


def config_error_field(message: str, cls: type) -> str | None:
    """The config key a service error is about ("Invalid dpo config: beta: could not convert
    ..." or "... beta must be > 0"); None when it names none (e.g. unknown keys)."""
    match = _KEYED.match(message)
    names = {f.name for f in fields(cls)}
    return match.group(1) if match and match.group(1) in names else None
