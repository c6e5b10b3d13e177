"""Results: the figures each benchmark returns, their JSON document and the markdown table.

One shape for everything so the JSON, the printed table and BENCHMARKS.md cannot disagree,
and so a test can check a run's output without knowing any benchmark's internals.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks.stats import ratio

SCHEMA = "flowyard-bench/1"
Status = Literal["ok", "partial", "skipped", "error"]
Better = Literal["lower", "higher"]
BEGIN_MARK = "<!-- BEGIN GENERATED RESULTS (python -m benchmarks --update-doc) -->"
END_MARK = "<!-- END GENERATED RESULTS -->"


@dataclass
class Figure:
    """One number, with the reference it is judged against (None when it has none)."""

    metric: str
    unit: str
    value: float | None
    reference: float | None = None
    better: Better = "lower"
    n: int | None = None

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.reference)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class BenchResult:
    """What one benchmark measured; `candidate` and `reference` say what was compared."""

    name: str
    title: str
    candidate: str = ""
    reference: str = ""
    status: Status = "ok"
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None

    def add(self, *figures: Figure) -> None:
        self.figures.extend(figures)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["figures"] = [f.as_dict() for f in self.figures]
        return data


def document(
    results: list[BenchResult],
    *,
    machine: dict[str, Any],
    settings: dict[str, Any],
    started_at: str,
    finished_at: str,
    quick: bool,
    note: str = "",
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "quick": quick,
        "started_at": started_at,
        "finished_at": finished_at,
        "note": note,
        "machine": machine,
        "settings": settings,
        "benchmarks": [r.as_dict() for r in results],
    }


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems with a results document's shape (empty when fine); used by the tests."""
    problems = []
    for key in (
        "schema",
        "quick",
        "started_at",
        "finished_at",
        "machine",
        "settings",
        "benchmarks",
    ):
        if key not in doc:
            problems.append(f"missing top-level key {key!r}")
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("nproc", "ram_bytes", "cpu_model"):
        if key not in doc.get("machine", {}):
            problems.append(f"machine lacks {key!r}")
    for bench in doc.get("benchmarks", []):
        name = bench.get("name", "?")
        if bench.get("status") not in ("ok", "partial", "skipped", "error"):
            problems.append(f"{name}: bad status {bench.get('status')!r}")
        if bench.get("status") in ("ok", "partial") and not bench.get("figures"):
            problems.append(f"{name}: status {bench['status']} but no figures")
        for fig in bench.get("figures", []):
            for key in ("metric", "unit", "value", "reference", "ratio", "better"):
                if key not in fig:
                    problems.append(f"{name}: figure lacks {key!r}")
            if fig.get("better") not in ("lower", "higher"):
                problems.append(f"{name}/{fig.get('metric')}: bad 'better'")
    return problems


def fmt_number(value: float | None, unit: str = "") -> str:
    """Three significant figures, no scientific notation for the ranges we print."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    elif magnitude == 0:
        text = "0"
    else:
        text = f"{value:#.3g}"
    return f"{text} {unit}".rstrip()


def fmt_ratio(fig: Figure) -> str:
    r = fig.ratio
    if r is None:
        return "-"
    digits = 1 if r >= 10 else 2 if r >= 0.1 else 3
    return f"{r:.{digits}f}x"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(results: list[BenchResult]) -> str:
    """One table of every figure, then what 'value' and 'reference' mean per benchmark."""
    lines = [
        "| Benchmark | Metric | Value | Reference | Ratio | Better | n |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for res in results:
        if not res.figures:
            why = "; ".join(res.notes) or res.status
            lines.append(f"| {_cell(res.title)} | *{res.status}*: {_cell(why)} | | | | | |")
            continue
        for i, fig in enumerate(res.figures):
            title = res.title + ("" if res.status == "ok" else f" ({res.status})")
            lines.append(
                "| "
                + " | ".join(
                    [
                        _cell(title) if i == 0 else "",
                        _cell(fig.metric),
                        fmt_number(fig.value, fig.unit),
                        fmt_number(fig.reference, fig.unit),
                        fmt_ratio(fig),
                        fig.better,
                        "" if fig.n is None else str(fig.n),
                    ]
                )
                + " |"
            )
    legend = ["", "Ratio = value / reference. What each benchmark compares:", ""]
    for res in results:
        if res.candidate or res.reference:
            legend.append(
                f"- **{res.title}**: value = {res.candidate or '-'}; "
                f"reference = {res.reference or '-'}."
            )
        legend.extend(f"  - {note}" for note in res.notes if res.figures)
    return "\n".join(lines + legend) + "\n"


def machine_lines(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    ram_gib = m["ram_bytes"] / 2**30
    load = m.get("loadavg_start")
    lines = [
        f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), {ram_gib:.1f} GiB RAM, "
        f"{m.get('os', '')}",
        f"- Software: Python {m.get('python', '?')}, Prefect {m.get('prefect', '?')}, "
        f"flowyard commit {m.get('git_commit', '?')}",
        f"- Run: {doc['started_at']} → {doc['finished_at']}"
        + (" (**--quick**: smoke-test sizes, not for comparison)" if doc["quick"] else ""),
    ]
    if load:
        end = m.get("loadavg_end")
        lines.append(
            "- Load average (1/5/15 min) at start: "
            + " / ".join(f"{x:.2f}" for x in load)
            + (f"; at end: {' / '.join(f'{x:.2f}' for x in end)}" if end else "")
        )
    if doc.get("note"):
        lines.append(f"- Note: {doc['note']}")
    return lines


def render_markdown(doc: dict[str, Any], results: list[BenchResult]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in doc["settings"].items() if not isinstance(v, dict))
    return "\n".join(
        [
            *machine_lines(doc),
            f"- Settings: {settings}",
            "",
            markdown_table(results),
        ]
    )


def results_from_document(doc: dict[str, Any]) -> list[BenchResult]:
    """Rebuild results from a JSON document (to re-render an older run)."""
    out = []
    for b in doc["benchmarks"]:
        figs = [Figure(**{k: v for k, v in f.items() if k != "ratio"}) for f in b["figures"]]
        out.append(BenchResult(**{**b, "figures": figs}))
    return out


def update_doc(path: Path, generated: str) -> None:
    """Replace the generated block between the markers in BENCHMARKS.md, nothing else."""
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN_MARK) + r".*?" + re.escape(END_MARK), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {BEGIN_MARK!r} … {END_MARK!r} block to replace")
    block = f"{BEGIN_MARK}\n{generated.rstrip()}\n{END_MARK}"
    path.write_text(pattern.sub(lambda _: block, text, count=1))


def write_outputs(doc: dict[str, Any], markdown: str, out_dir: Path, stem: str) -> list[Path]:
    """<stem>.json and <stem>.md, plus latest.json / latest.md copies of them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    payload = json.dumps(doc, indent=2, default=str) + "\n"
    for name in (stem, "latest"):
        (out_dir / f"{name}.json").write_text(payload)
        (out_dir / f"{name}.md").write_text(markdown)
        written += [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    return written
