"""How the CLI shows a FlowyardError: message and fix always, its details on request."""

from __future__ import annotations

import pytest
import typer

from flowyard.cli._common import handle_errors
from flowyard.errors import FlowyardError

TRACEBACK = """Traceback (most recent call last):
  File "prefect_setup.py", line 1, in <module>
httpx.ConnectError: [Errno 111] Connection refused"""


@handle_errors
def failing(details: str | None) -> None:
    raise FlowyardError(
        "Applying pools failed: ConnectError: refused",
        fix="Start the platform with `flowyard up`.",
        details=details,
    )


def run(capsys: pytest.CaptureFixture[str], details: str | None) -> list[str]:
    with pytest.raises(typer.Exit) as exited:
        failing(details)
    assert exited.value.exit_code == 1
    out, err = capsys.readouterr()
    assert out == ""
    return err.splitlines()


def test_details_hidden_by_default_with_a_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWYARD_DEBUG", raising=False)
    lines = run(capsys, TRACEBACK)
    assert lines[0].startswith("Error: Applying pools failed")
    assert lines[1] == "(details: run again with FLOWYARD_DEBUG=1)"
    assert lines[2] == "Fix: Start the platform with `flowyard up`."
    assert "Traceback" not in "\n".join(lines)


def test_details_printed_indented_under_flowyard_debug(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWYARD_DEBUG", "1")
    lines = run(capsys, TRACEBACK)
    assert lines[0].startswith("Error: Applying pools failed")
    # Verbatim (no markup, no wrapping), two spaces in, between the message and the fix.
    assert lines[1:4] == ["  " + line for line in TRACEBACK.splitlines()]
    assert lines[4] == "Fix: Start the platform with `flowyard up`."


# None, empty, or the very line the message already quotes.
@pytest.mark.parametrize("details", [None, "", "ConnectError: refused\n"])
def test_no_hint_when_details_add_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, details: str | None
) -> None:
    monkeypatch.setenv("FLOWYARD_DEBUG", "1")
    lines = run(capsys, details)
    assert len(lines) == 2
    assert lines[1].startswith("Fix:")
