"""The README's configuration reference is generated from the model; keep it current."""

from __future__ import annotations

from pathlib import Path

from flowyard.config.reference import markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_config_reference_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- config-reference:start -->\n", 1)[1].split(
        "\n<!-- config-reference:end -->"
    )[0]
    assert block.strip() == markdown().strip(), "run: python -m flowyard.config.reference"


def test_quick_start_is_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert commands == ["make up", "make test"]
