"""Flow code stored by content: the digest, the folder names, the marker, and the rewrite of
a project's prefect.yaml that `flowyard deploy` hands to `prefect deploy`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowyard.client import code_store
from flowyard.projects.code import PUSH_CODE, PUSH_TO_S3, content_addressed, project_files

ROOT = Path(__file__).resolve().parents[2]


def project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def digest_of(root: Path) -> str:
    return code_store.digest(code_store.hash_files(root, project_files(root)))


def test_digest_follows_content_not_bytecode_or_time(tmp_path: Path) -> None:
    a = project(tmp_path / "a", {"prefect.yaml": "name: x\n", "src/f.py": "print(1)\n"})
    b = project(tmp_path / "b", {"prefect.yaml": "name: x\n", "src/f.py": "print(1)\n"})
    # Bytecode differs between interpreters: never part of the code's identity.
    project(b, {"src/__pycache__/f.cpython-311.pyc": "junk", "g.pyc": "junk"})
    assert project_files(b) == ["prefect.yaml", "src/f.py"]
    assert digest_of(a) == digest_of(b)
    (b / "src/f.py").write_text("print(2)\n")
    assert digest_of(a) != digest_of(b)
    # A renamed file is other code too, even with the same bytes.
    (b / "src/f.py").write_text("print(1)\n")
    (b / "src/f.py").rename(b / "src/g.py")
    assert digest_of(a) != digest_of(b)


def test_prefectignore_is_honoured_as_push_to_s3_does(tmp_path: Path) -> None:
    root = project(
        tmp_path, {".prefectignore": "*.csv\n", "data.csv": "1,2\n", "flow.py": "x = 1\n"}
    )
    assert project_files(root) == [".prefectignore", "flow.py"]


def test_content_folders_parse_and_stay_out_of_the_fixed_folder() -> None:
    digest = "ab" * 32
    folder = code_store.content_folder("flowyard-flows/", digest)
    assert folder == f"flowyard-flows@sha256-{digest}"
    assert code_store.parse_content_folder(folder) == ("flowyard-flows", digest)
    assert code_store.parse_content_folder("flowyard-flows") is None
    # pull_from_s3 lists `<folder>/`: an old deployment's fixed folder never sees these.
    assert not folder.startswith("flowyard-flows/")


def test_marker_round_trip_and_tampering(tmp_path: Path) -> None:
    files = {"a.py": "11" * 32, "b/c.py": "22" * 32}
    digest = code_store.digest(files)
    text = code_store.marker_text(digest, files, {"a.py": 3, "b/c.py": 4})
    assert code_store.read_marker(text) == {
        "a.py": {"sha256": "11" * 32, "size": 3},
        "b/c.py": {"sha256": "22" * 32, "size": 4},
    }
    with pytest.raises(ValueError, match="digest"):
        code_store.read_marker(text.replace("22" * 32, "33" * 32))


def _flows_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "flows" / "prefect.yaml").read_text())
    return data


def test_rewrite_pushes_by_content_and_keeps_stock_pull() -> None:
    data = content_addressed(_flows_yaml())
    (push,) = data["push"]
    assert list(push) == [PUSH_CODE]
    assert push[PUSH_CODE]["folder"] == "flowyard-flows" and push[PUSH_CODE]["id"] == "push-code"
    (pull,) = data["pull"]
    assert pull[code_store.PULL_FROM_S3]["folder"] == "{{ push-code.folder }}"


def test_rewrite_points_a_literal_pull_folder_at_the_content_folder() -> None:
    data = _flows_yaml()
    del data["push"][0][PUSH_TO_S3]["id"]
    data["pull"][0][code_store.PULL_FROM_S3]["folder"] = "flowyard-flows/"
    # A deployment with its own pull section, and one pulling from elsewhere: left alone.
    data["deployments"][0]["pull"] = [{code_store.PULL_FROM_S3: {"bucket": "b", "folder": "x"}}]
    data["deployments"][1]["pull"] = copy.deepcopy(data["pull"])
    content_addressed(data)
    assert data["push"][0][PUSH_CODE]["id"] == "push-code"
    assert data["pull"][0][code_store.PULL_FROM_S3]["folder"] == "{{ push-code.folder }}"
    assert data["deployments"][0]["pull"][0][code_store.PULL_FROM_S3]["folder"] == "x"
    assert data["deployments"][1]["pull"][0][code_store.PULL_FROM_S3]["folder"] == (
        "{{ push-code.folder }}"
    )
