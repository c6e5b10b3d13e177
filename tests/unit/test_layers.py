"""The layering is enforced by import-linter's contracts in pyproject.toml (`make lint`).

These tests prove the contracts hold today and that they would catch a back-import: a copy
of the package with one upward import added must break the layers contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_the_layers_hold() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_back_import_breaks_the_layers_contract(tmp_path: Path) -> None:
    copy = tmp_path / "flowyard"
    shutil.copytree(REPO / "src" / "flowyard", copy)
    base = copy / "services" / "base.py"
    # A service reaching up into the platform layer: what the contract exists to stop.
    base.write_text(base.read_text() + "\nimport flowyard.platform.lifecycle  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert "flowyard.services.base -> flowyard.platform.lifecycle" in result.stdout
