"""A small YAML writer for compose files: block style, named anchors, merge keys and tags.

PyYAML cannot write what a readable compose file needs (`x-` blocks with named anchors,
`<<: *name` merge keys, compose's `!reset`/`!override` tags, comments), and its output
changes with its version; a committed file must be byte-stable, so this writes it directly.
Only what the renderer produces is supported: mappings, lists, str/int/bool/None scalars.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MERGE = "<<"
WIDTH = 100
# Unquoted only when YAML 1.1 and 1.2 both read it back as this same string: no `:`
# (1.1 reads `8080:80` as a base-60 number), no leading digit, no `$`, `#`, quotes or space.
_PLAIN = re.compile(r"(?:[A-Za-z_/]|-[A-Za-z-])[A-Za-z0-9_./@+=,-]*\Z")
_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


@dataclass(frozen=True)
class Anchor:
    """`&name` on a value, defined once in an `x-` block."""

    name: str
    value: Any


@dataclass(frozen=True)
class Alias:
    """`*name`: the anchored value itself (or, under `<<`, its keys merged in)."""

    name: str


@dataclass(frozen=True)
class Tagged:
    """A value with a YAML tag, e.g. compose's `!reset []` or `!override`."""

    tag: str
    value: Any


@dataclass(frozen=True)
class Commented:
    """A value whose key gets `# comment` lines above it."""

    comment: str
    value: Any


def dump(doc: dict[str, Any], header: str = "") -> str:
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("")
    for i, (key, value) in enumerate(doc.items()):
        # A blank line between top-level sections, as hand-written compose files have.
        if i:
            lines.append("")
        lines += _entry(key, value, 0)
    return "\n".join(lines) + "\n"


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} {value!r} as YAML")
    if _PLAIN.match(value) and value.lower() not in _RESERVED:
        return value
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(value)


def _entry(key: str, value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    if isinstance(value, Commented):
        lines += [f"{pad}# {line}".rstrip() for line in value.comment.splitlines()]
        value = value.value
    name = MERGE if key == MERGE else scalar(key)
    return lines + _value(f"{pad}{name}:", value, indent)


def _value(prefix: str, value: Any, indent: int) -> list[str]:
    """`prefix` followed by `value`, inline when it is a scalar, else as a nested block."""
    if isinstance(value, Anchor):
        prefix, value = f"{prefix} &{value.name}", value.value
    if isinstance(value, Tagged):
        prefix, value = f"{prefix} {value.tag}", value.value
    if isinstance(value, Alias):
        return [f"{prefix} *{value.name}"]
    if isinstance(value, dict):
        if not value:
            return [f"{prefix} {{}}"]
        nested = []
        for key, item in value.items():
            nested += _entry(key, item, indent + 2)
        return [prefix, *nested]
    if isinstance(value, list):
        flow = _flow(value)
        if flow is not None and len(prefix) + 1 + len(flow) <= WIDTH:
            return [f"{prefix} {flow}"]
        return [prefix, *_sequence(value, indent + 2)]
    if isinstance(value, str) and "\n" in value:
        return _literal(prefix, value, indent + 2)
    return [f"{prefix} {scalar(value)}"]


def _flow(items: list[Any]) -> str | None:
    """`[a, b]` for a list of scalars or aliases (JSON quoting keeps it valid YAML)."""
    parts = []
    for item in items:
        if isinstance(item, Alias):
            parts.append(f"*{item.name}")
        elif item is None or isinstance(item, (str, int, bool)):
            parts.append(json.dumps(item) if isinstance(item, str) else scalar(item))
        else:
            return None
    return "[" + ", ".join(parts) + "]"


def _sequence(items: list[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for item in items:
        if isinstance(item, dict) and item:
            nested = []
            for key, value in item.items():
                nested += _entry(key, value, indent + 2)
            lines += [f"{pad}- {nested[0].lstrip()}", *nested[1:]]
        else:
            lines += _value(f"{pad}-", item, indent)
    return lines


def _literal(prefix: str, text: str, indent: int) -> list[str]:
    """A `|` block, which keeps file contents (configs) readable and unescaped."""
    if text.endswith("\n\n") or text.startswith((" ", "\n")):
        raise ValueError("a literal block cannot keep leading blanks or several final newlines")
    chomp = "" if text.endswith("\n") else "-"
    pad = " " * indent
    body = [f"{pad}{line}" if line else "" for line in text.rstrip("\n").split("\n")]
    return [f"{prefix} |{chomp}", *body]
