"""Progress reporting for long operations, without this package knowing about terminals.

The CLI passes a reporter that draws rich progress bars; tests and library callers use
`Reporter()`, which is silent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Task:
    """One step of an operation: `advance` moves its bar, `summary` is shown when it ends."""

    label: str
    total: float | None = None
    completed: float = 0
    summary: str = ""
    failed: bool = False
    reporter: Reporter | None = field(default=None, repr=False)

    def advance(self, amount: float = 1) -> None:
        self.completed += amount
        if self.reporter:
            self.reporter.changed(self)

    def set_total(self, total: float) -> None:
        self.total = total
        if self.reporter:
            self.reporter.changed(self)


class Reporter:
    """Silent; `flowyard.cli.ops` subclasses it to draw."""

    @contextmanager
    def task(self, label: str, total: float | None = None) -> Iterator[Task]:
        task = Task(label, total, reporter=self)
        self.started(task)
        try:
            yield task
        except BaseException:
            task.failed = True
            raise
        finally:
            self.finished(task)

    def started(self, task: Task) -> None:
        pass

    def changed(self, task: Task) -> None:
        pass

    def finished(self, task: Task) -> None:
        pass

    def note(self, text: str) -> None:
        pass
