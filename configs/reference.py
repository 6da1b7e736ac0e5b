"""The config reference (docs/configuration.md), generated from configs/schema.py so that it cannot drift.

Every key's default comes from the dataclasses and its meaning from the comment on its line in
schema.py (or the section's docstring). `python -m configs.reference` prints the Markdown table;
tests/test_readme.py checks that docs/configuration.md holds exactly this table.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from pathlib import Path

from configs import schema

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its line in the class's source."""
    source, first = inspect.getsourcelines(cls)
    found = {}
    for node in ast.parse("".join(source).lstrip()).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = source[node.lineno - 1]
            if "#" in line:
                found[node.target.id] = line.split("#", 1)[1].strip()
    return found


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            return "(section)"
    else:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def rows(cls: type = schema.RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, meaning) for every leaf key, sections in declaration order."""
    out = []
    comments = _comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        nested = next((t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)),
                      None)
        meaning = comments.get(f.name, "")
        if nested is not None and f.default is not None:
            out += rows(nested, key + ".")
        elif nested is not None:  # an optional section (null by default): its keys, and null to switch it off
            doc = (nested.__doc__ or "").strip().splitlines()[0]
            out.append((key, "null", meaning or doc))
            out += [(k, d, m) for k, d, m in rows(nested, key + ".")]
        else:
            out.append((key, _default(f), meaning))
    return out


def markdown() -> str:
    lines = [BEGIN, "| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {m} |" for k, d, m in rows()]
    lines.append(END)
    return "\n".join(lines)


def page_block(page: Path) -> str:
    """The page's current table, markers included ('' when the markers are missing)."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        return ""
    return text[text.index(BEGIN):text.index(END) + len(END)]


if __name__ == "__main__":
    print(markdown())
