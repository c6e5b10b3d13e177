"""`flowyard.worker.code_cache`: pulled code kept by content. The worker may not import
`flowyard.client.code_store`, so these check the two agree on the layout, then what the
cache serves, with a stand-in for prefect-aws's `pull_from_s3` that writes what a pull of
the folder would (the real step, against the platform's S3, is in
tests/integration/test_fast_worker.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowyard.client import code_store
from flowyard.worker import code_cache

FILES = {"flow.py": b"print('v1')\n", "pkg/mod.py": b"X = 1\n"}


def _folder(files: dict[str, bytes], tmp: Path) -> tuple[str, bytes]:
    """A content folder's name for `files` and its marker, as `flowyard deploy` makes them."""
    root = tmp / "src"
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    hashes = code_store.hash_files(root, files)
    digest = code_store.digest(hashes)
    sizes = {rel: len(body) for rel, body in files.items()}
    marker = code_store.marker_text(digest, hashes, sizes).encode()
    return code_store.content_folder("proj", digest), marker


class StandIn:
    """Writes the folder's files into the working directory, as the real step does."""

    def __init__(self, files: dict[str, bytes], marker: bytes) -> None:
        self.files = {**files, code_store.MARKER: marker}
        self.calls = 0

    def __call__(self, bucket: str, folder: str, **_: Any) -> dict[str, Any]:
        self.calls += 1
        for rel, body in self.files.items():
            (Path.cwd() / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path.cwd() / rel).write_bytes(body)
        return {"bucket": bucket, "folder": folder, "directory": os.getcwd()}


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    run.mkdir()
    before = os.getcwd()
    os.chdir(run)
    try:
        yield run
    finally:
        os.chdir(before)


def test_the_layout_is_code_stores() -> None:
    files = {"b.py": "1" * 64, "a/c.py": "2" * 64}
    assert code_cache.digest(files) == code_store.digest(files)
    assert code_cache.MARKER == code_store.MARKER
    folder = code_store.content_folder("flows/proj", code_store.digest(files))
    match = code_cache._CONTENT_FOLDER.match(folder)
    assert match and code_store.parse_content_folder(folder) == (match["base"], match["digest"])
    assert code_cache._CONTENT_FOLDER.match("flows/proj") is None
    assert code_store.parse_content_folder("flows/proj") is None


def test_a_second_run_is_served_from_the_cache(tmp_path: Path, workdir: Path) -> None:
    folder, marker = _folder(FILES, tmp_path)
    pull = StandIn(FILES, marker)
    cache = code_cache.cache_dir(tmp_path)
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    out = code_cache.pull(cache, pull, "code", folder)
    assert out == {"bucket": "code", "folder": folder, "directory": str(workdir)}
    assert pull.calls == 1
    again = tmp_path / "run2"
    again.mkdir()
    os.chdir(again)
    code_cache.pull(cache, pull, "code", folder)
    assert pull.calls == 1, "served from the cache"
    for rel, body in FILES.items():
        assert (again / rel).read_bytes() == body
    assert (again / code_store.MARKER).read_bytes() == marker


def test_an_altered_copy_is_pulled_again_and_extra_files_never_copied(
    tmp_path: Path, workdir: Path
) -> None:
    folder, marker = _folder(FILES, tmp_path)
    pull = StandIn(FILES, marker)
    cache = code_cache.cache_dir(tmp_path)
    code_cache.pull(cache, pull, "code", folder)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    # A file slipped in next to the listed ones is never copied into a run.
    (entry / "sitecustomize.py").write_text("raise SystemExit('injected')\n")
    run2 = tmp_path / "run2"
    run2.mkdir()
    os.chdir(run2)
    code_cache.pull(cache, pull, "code", folder)
    assert pull.calls == 1 and not (run2 / "sitecustomize.py").exists()
    # A listed file changed: the copy is dropped and the code pulled again.
    (entry / "flow.py").write_bytes(b"print('altered')\n")
    run3 = tmp_path / "run3"
    run3.mkdir()
    os.chdir(run3)
    code_cache.pull(cache, pull, "code", folder)
    assert pull.calls == 2
    assert (run3 / "flow.py").read_bytes() == FILES["flow.py"]
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert (entry / "flow.py").read_bytes() == FILES["flow.py"]


def test_only_content_folders_are_kept(tmp_path: Path, workdir: Path) -> None:
    _, marker = _folder(FILES, tmp_path)
    pull = StandIn(FILES, marker)
    cache = code_cache.cache_dir(tmp_path)
    for _ in range(2):
        code_cache.pull(cache, pull, "code", "proj")  # a fixed folder: rewritten in place
    assert pull.calls == 2 and list(cache.iterdir()) == []


def test_a_pull_that_is_not_the_folders_code_is_not_kept(tmp_path: Path, workdir: Path) -> None:
    folder, marker = _folder(FILES, tmp_path)
    pull = StandIn({**FILES, "flow.py": b"print('other')\n"}, marker)
    cache = code_cache.cache_dir(tmp_path)
    code_cache.pull(cache, pull, "code", folder)
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_install_wraps_prefect_aws_once(tmp_path: Path) -> None:
    import prefect_aws.deployments.steps as steps

    original = steps.pull_from_s3
    try:
        assert code_cache.install(tmp_path / "code")
        wrapped = steps.pull_from_s3
        assert wrapped is not original and wrapped.__wrapped__ is original  # type: ignore[attr-defined]
        assert code_cache.install(tmp_path / "code")
        assert steps.pull_from_s3 is wrapped
    finally:
        steps.pull_from_s3 = original
