"""`x-` blocks for compose files: each setting written once, then merged or aliased.

Works on plain compose data: given named blocks, it replaces every occurrence by `<<: *name`
(when a mapping holds all of a block's keys) or `*name` (when it is the whole value), and
puts the blocks used at the top of the document.
"""

from __future__ import annotations

from typing import Any

from flowyard.compose.yaml_emit import MERGE, Alias, Anchor


def factor(d: dict[str, Any], anchors: list[tuple[str, Any]]) -> Any:
    """Replace each anchor's keys, when all present with equal values, by `<<: *anchor`."""
    used = [n for n, block in anchors if block and all(d.get(k) == v for k, v in block.items())]
    if not used:
        return d
    rest = {k: v for k, v in d.items() if not any(k in b for n, b in anchors if n in used)}
    if not rest and len(used) == 1:
        return Alias(used[0])
    merge = Alias(used[0]) if len(used) == 1 else [Alias(n) for n in used]
    return {MERGE: merge, **rest}


Anchors = dict[str, list[tuple[str, Any]]]


def present(doc: dict[str, Any], anchors: Anchors) -> dict[str, Any]:
    """`anchors`: scope ("service" or a service key) -> [(name, block)] to factor out."""
    services = {}
    for name, svc in doc["services"].items():
        svc = dict(svc)
        for key, value in list(svc.items()):
            if key in anchors and isinstance(value, dict):
                svc[key] = factor(value, anchors[key])
        services[name] = factor(svc, anchors.get("service", []))
    blocks = [(n, b) for scope in anchors.values() for n, b in scope]
    used = {a.name for a in aliases(services)}
    head = {f"x-{n}": Anchor(n, b) for n, b in blocks if n in used}
    rest = {k: v for k, v in doc.items() if k != "services"}
    first = {k: rest.pop(k) for k in ("name",) if k in rest}
    return {**first, **head, "services": services, **rest}


def aliases(value: Any) -> list[Alias]:
    if isinstance(value, Alias):
        return [value]
    if isinstance(value, dict):
        return [a for v in value.values() for a in aliases(v)]
    if isinstance(value, list):
        return [a for v in value for a in aliases(v)]
    return []


def shared(services: dict[str, Any], key: str, names: list[str]) -> dict[str, Any]:
    """The entries of the `key` mapping that the given services all have, with the same
    values (e.g. the environment two processes share; each keeps its own extras)."""
    values = [services[n].get(key) for n in names if n in services]
    if len(values) < 2 or not all(isinstance(v, dict) for v in values):
        return {}
    first = values[0]
    return {k: v for k, v in first.items() if all(other.get(k) == v for other in values[1:])}
