"""The config keys as documentation, read from the dataclass tree of `taidtron/config.py` (each field's docstring):
the list `python -m taidtron.train --help` prints and docs/config.md (`tools/render_docs.py`)."""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any

from taidtron.config import TrainConfig


def documented_keys() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, docstring) of every config key, sections in tree order; a section's own row has
    key "" and its class docstring."""
    import ast
    import inspect

    def docs(cls: type) -> dict[str, str]:
        out: dict[str, str] = {}
        for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # inherited fields too
            body = ast.parse(inspect.getsource(klass)).body[0].body
            for node, nxt in zip(body, body[1:]):
                documented = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                if isinstance(node, ast.AnnAssign) and documented:
                    out[node.target.id] = " ".join(str(nxt.value.value).split())
        return out

    rows: list[tuple[str, str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        doc = docs(cls)
        default = cls()
        for f in fields(cls):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                rows.append((prefix + f.name, "", None, doc.get(f.name, (type(value).__doc__ or "").strip())))
                walk(type(value), f"{prefix}{f.name}.")
            else:
                rows.append((prefix.rstrip("."), prefix + f.name, value, doc.get(f.name, "")))

    walk(TrainConfig, "")
    return rows


def config_help() -> str:
    """Every key with its default and docstring, for `--help`."""
    lines = []
    for section, key, default, doc in documented_keys():
        lines.append(f"\n[{section}]  {doc}" if not key else f"  {key}={default!r}  {doc}")
    return "\n".join(lines)


def config_reference() -> str:
    """docs/config.md: every key with its default and meaning, generated from this module (`tools/render_docs.py`;
    a test keeps the committed page equal to it)."""
    lines = [
        "# Config reference",
        "",
        "Generated from `taidtron/config.py` by `python tools/render_docs.py`; do not edit by hand. Every key can be",
        "set in the experiment's YAML file or on the command line as `section.key=value`; `python -m taidtron.train",
        "--help` prints the same list.",
    ]
    for section, key, default, doc in documented_keys():
        if not key:
            lines += ["", f"## `{section}`", "", doc, "", "| key | default | meaning |", "|---|---|---|"]
        else:
            escaped = doc.replace("|", "\\|")
            lines.append(f"| `{key}` | `{default!r}` | {escaped} |")
    return "\n".join(lines) + "\n"
