"""Backup manifests: every way a backup can be damaged or incomplete is refused, with the
reason, and the upgrade's reading of Prefect's migration graph."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flowyard.errors import FlowyardError
from flowyard.ops import manifest as mf
from flowyard.ops.progress import Reporter, Task
from flowyard.ops.upgrade import heads, migration_graph, pending

OBJECT = b"result bytes"
SHA = hashlib.sha256(OBJECT).hexdigest()


def make_backup(root: Path) -> Path:
    """A small but complete backup, laid out as `flowyard backup` writes one."""
    files = {
        mf.CONFIG_FILE: b"[proxy]\nhttps_port = 8443\n",
        mf.SECRETS_FILE: b"postgres_superuser_password = 'x'\n",
        mf.dump_path("prefect"): b"PGDMP fake dump",
        mf.blob_path("results", SHA): OBJECT,
        mf.index_path("results"): json.dumps(
            {"bucket": "results", "objects": [{"key": "a/b", "sha256": SHA, "size": len(OBJECT)}]}
        ).encode(),
        "caddy/pki/authorities/local/root.crt": b"-----BEGIN CERTIFICATE-----",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / mf.SECRETS_FILE).chmod(0o600)
    manifest = mf.Manifest(
        created_at="2026-01-01T00:00:00+00:00",
        source_home="/var/lib/flowyard",
        versions={"flowyard": "0.1.0", "prefect": "3.9.1", "pg_dump": "18.6"},
        databases={"prefect": "91e2b8f3d6a4"},
        buckets={"results": {"objects": 1, "bytes": len(OBJECT)}},
        components=["caddy"],
        files=mf.scan(root),
    )
    mf.write_manifest(root, manifest)
    return root


def problems(root: Path) -> str:
    return "\n".join(mf.find_problems(root)[1])


def test_complete_backup_verifies_and_keeps_modes(tmp_path: Path) -> None:
    manifest = mf.verify(make_backup(tmp_path))
    assert manifest.databases == {"prefect": "91e2b8f3d6a4"}
    assert manifest.files[mf.SECRETS_FILE].mode == 0o600
    assert (tmp_path / mf.MANIFEST).stat().st_mode & 0o777 == 0o600
    # Round trip through JSON keeps everything.
    again = mf.Manifest.from_json((tmp_path / mf.MANIFEST).read_text())
    assert again == manifest


def test_flipped_byte_is_named(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    dump = root / mf.dump_path("prefect")
    data = bytearray(dump.read_bytes())
    data[3] ^= 0x01
    dump.write_bytes(bytes(data))
    assert "databases/prefect.dump is damaged (sha256" in problems(root)


def test_truncated_file_is_named(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    (root / mf.CONFIG_FILE).write_bytes(b"[proxy]\n")
    assert f"{mf.CONFIG_FILE} has 8 bytes" in problems(root)


def test_deleted_object_is_named_with_its_key(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    (root / mf.blob_path("results", SHA)).unlink()
    text = problems(root)
    assert f"{mf.blob_path('results', SHA)} is missing" in text
    assert "bucket results: the contents of 'a/b' are missing" in text


def test_no_manifest_means_incomplete(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    (root / mf.MANIFEST).unlink()
    with pytest.raises(FlowyardError, match="incomplete") as err:
        mf.verify(root)
    assert "Nothing was changed" in (err.value.fix or "")


def test_damaged_manifest(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    (root / mf.MANIFEST).write_text("{not json")
    assert "manifest.json is damaged" in problems(root)
    (root / mf.MANIFEST).write_text(json.dumps({"format": "something-else"}))
    assert "not a Flowyard backup manifest" in problems(root)


def test_newer_manifest_format_is_refused(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    data = json.loads((root / mf.MANIFEST).read_text())
    data["format_version"] = mf.FORMAT_VERSION + 1
    (root / mf.MANIFEST).write_text(json.dumps(data))
    assert "format version" in problems(root)


def test_added_file_is_refused(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    (root / "databases" / "other.dump").write_bytes(b"?")
    assert "databases/other.dump is not in the manifest" in problems(root)


def test_required_part_missing_from_manifest(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    data = json.loads((root / mf.MANIFEST).read_text())
    del data["files"][mf.dump_path("prefect")]
    (root / mf.MANIFEST).write_text(json.dumps(data))
    text = problems(root)
    assert "databases/prefect.dump is not in the manifest" in text


def test_index_naming_absent_contents(tmp_path: Path) -> None:
    root = make_backup(tmp_path)
    index = root / mf.index_path("results")
    objects = [{"key": "ghost", "sha256": "0" * 64, "size": 3}]
    index.write_text(json.dumps({"bucket": "results", "objects": objects}))
    data = json.loads((root / mf.MANIFEST).read_text())
    data["files"][mf.index_path("results")]["sha256"] = mf.sha256_file(index)
    data["files"][mf.index_path("results")]["size"] = index.stat().st_size
    (root / mf.MANIFEST).write_text(json.dumps(data))
    assert "the contents of 'ghost' are missing" in problems(root)


def test_paths_outside_the_backup_are_refused(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "b")
    data = json.loads((root / mf.MANIFEST).read_text())
    data["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "size": 1, "mode": "0644"}
    (root / mf.MANIFEST).write_text(json.dumps(data))
    assert "outside the backup" in problems(root)


def test_symlink_is_refused(tmp_path: Path) -> None:
    root = make_backup(tmp_path / "b")
    target = root / mf.CONFIG_FILE
    outside = tmp_path / "outside.toml"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    assert "symbolic link" in problems(root)


def test_incompatible_versions() -> None:
    manifest = mf.Manifest("", "", {"prefect": "3.10.0", "pg_dump": "19.1"}, {}, {})
    reasons = mf.incompatibilities(manifest, {"prefect": "3.9.1", "pg_dump": "18.6"})
    assert len(reasons) == 2 and "Prefect 3.10.0" in reasons[1]
    older = mf.Manifest("", "", {"prefect": "3.4.0", "pg_dump": "17.2"}, {}, {})
    assert mf.incompatibilities(older, {"prefect": "3.9.1", "pg_dump": "18.6"}) == []


def _migration(folder: Path, rev: str, down: str | None) -> None:
    down_text = repr(down) if down else "None"
    (folder / f"{rev}.py").write_text(f'revision = "{rev}"\ndown_revision = {down_text}\n')


def test_migration_graph_heads_and_pending(tmp_path: Path) -> None:
    for rev, down in (("a1", None), ("b2", "a1"), ("c3", "b2")):
        _migration(tmp_path, rev, down)
    graph = migration_graph(tmp_path)
    assert heads(graph) == ["c3"]
    assert pending(graph, "a1") == ["b2", "c3"]
    assert pending(graph, "c3") == []
    assert pending(graph, None) == ["a1", "b2", "c3"]


def test_installed_prefect_has_one_head() -> None:
    graph = migration_graph()
    assert len(heads(graph)) == 1 and len(graph) > 50


def test_reporter_marks_failed_tasks() -> None:
    seen: list[Task] = []

    class Recording(Reporter):
        def finished(self, task: Task) -> None:
            seen.append(task)

    reporter = Recording()
    with reporter.task("ok") as task:
        task.advance(3)
    with pytest.raises(RuntimeError), reporter.task("boom"):
        raise RuntimeError
    assert [(t.label, t.completed, t.failed) for t in seen] == [("ok", 3, False), ("boom", 0, True)]


def test_same_size_other_bytes_object_is_refused_by_checksum(tmp_path: Path) -> None:
    """Sizes alone would pass this blob: only its sha256 tells, and the object is named."""
    root = make_backup(tmp_path)
    blob = root / mf.blob_path("results", SHA)
    blob.write_bytes(b"X" * len(OBJECT))
    assert blob.stat().st_size == len(OBJECT)
    text = problems(root)
    assert f"{mf.blob_path('results', SHA)} is damaged (sha256" in text
    assert "object 'a/b' in bucket results" in text
    with pytest.raises(FlowyardError, match="Nothing was changed"):
        mf.verify(root)


def test_blob_whose_recorded_checksum_is_not_its_name_is_refused(tmp_path: Path) -> None:
    """A manifest rewritten to vouch for other bytes under the same blob name."""
    root = make_backup(tmp_path)
    blob = root / mf.blob_path("results", SHA)
    blob.write_bytes(b"Y" * len(OBJECT))
    manifest = mf.Manifest.from_json((root / mf.MANIFEST).read_text())
    manifest.files = mf.scan(root)
    mf.write_manifest(root, manifest)
    assert "bucket results: 'a/b' is damaged (sha256 differs from the object index)" in (
        problems(root)
    )


def test_access_files_and_dask_ca_round_trip_and_force_knows_them(tmp_path: Path) -> None:
    """A backup carries the logins, the MLflow logins still to delete, the SSO client secret
    and the Dask CA (joined Dask workers hold certificates it signed); a restore puts them
    back owner-only; and `restore --force` takes a home holding all of them for Flowyard's
    (it refused every home with a users.toml before)."""
    from typer.testing import CliRunner

    from flowyard.cli.app import app
    from flowyard.config.context import Context, load_context
    from flowyard.ops import backup, restore

    source = tmp_path / "source"
    assert CliRunner().invoke(app, ["init", "--home", str(source)]).exit_code == 0
    ctx = load_context(source)
    made = {
        ctx.paths.users_file: b"[users.ada]\n",
        ctx.paths.mlflow_revoked: b"bob\n",
        ctx.paths.sso_client_secret: b"s3cret\n",
        ctx.paths.dask_pki / "ca.key": b"-----BEGIN PRIVATE KEY-----",
    }
    for path, data in made.items():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o600)
    # A temporary file of write_private's left by a crash is Flowyard's too.
    (source / ".users.toml.k2j4.tmp").write_bytes(b"")

    root = tmp_path / "backup"
    root.mkdir()
    components = backup._backup_files(ctx, root, Reporter())
    assert mf.DASK_DIR in components
    manifest = mf.Manifest(
        created_at="2026-01-01T00:00:00+00:00",
        source_home=str(source),
        versions={},
        databases={},
        buckets={},
        components=components,
        files=mf.scan(root),
    )
    home = tmp_path / "restored"
    restored = Context(config=ctx.config.model_copy(update={"home": home}), secrets=ctx.secrets)
    restore._restore_files(root, manifest, restored)
    for path, data in made.items():
        back = restored.paths.home / path.relative_to(source)
        assert back.read_bytes() == data, back
        assert back.stat().st_mode & 0o777 == 0o600, back
    assert restored.paths.dask_pki.stat().st_mode & 0o077 == 0

    assert restore._not_a_flowyard_home(source) is None
    (source / "notes.txt").write_text("mine")
    assert "notes.txt" in str(restore._not_a_flowyard_home(source))
