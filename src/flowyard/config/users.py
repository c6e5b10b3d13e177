"""Logins of people and workers: one owner-only TOML file of names, roles and argon2 hashes.

Stock Prefect has one shared `user:password` (PREFECT_SERVER_API_AUTH_STRING). Flowyard keeps
that one as Prefect's internal credential, held only by the proxy, and gives every person and
worker a login of their own, checked by the access gate (`flowyard.access.gate`) in front of
Prefect. A key is shown once, at `flowyard user add`; only its argon2id hash is stored.

Each user may also hold S3 keys (SeaweedFS identities, `services.seaweedfs.role_actions`) and
an MLflow login of the same name (`platform.identities`). S3 signatures (SigV4) need the
secret key itself on the server, so the S3 keys are stored here in clear, in this owner-only
file, which SeaweedFS's identity config is rendered from; MLflow keeps only its own hash of
the MLflow password, so this file records only that the login exists.

Migration: a home made before this file existed has one login, `prefect_auth_string` in
secrets.toml (user `admin`). `ensure_users_file` makes it the first admin, so every existing
profile, join file and browser keeps working unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

import tomli_w
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from flowyard.config.secrets import PLATFORM_WORKER, Secrets, require_private
from flowyard.errors import FlowyardError
from flowyard.files import write_private

Role = Literal["viewer", "operator", "worker", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
# Roles `flowyard user add` hands out; `worker` is minted by `flowyard worker join-file`.
PERSON_ROLES = ("viewer", "operator", "admin")
NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
HEADER = (
    "# Flowyard logins: `flowyard user add|list|remove`. Keys are argon2id hashes; S3 secret\n"
    "# keys are in clear (S3 signatures need them on the server). Owner-only (0600).\n"
)

_HASHER = PasswordHasher()


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    key_hash: str
    created: str
    # SSO sessions (`add_session`) only: when the login stops working (ISO time, UTC).
    expires: str | None = None
    # The user's own S3 keys ("" when none: an external store, or made before they existed).
    s3_access_key: str = ""
    s3_secret_key: str = ""
    # An MLflow login of the same name exists (its password is only in MLflow, hashed).
    mlflow: bool = False

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires is None:
            return False
        return datetime.fromisoformat(self.expires) <= (now or datetime.now(UTC))

    def identities(self) -> list[str]:
        """What this user can log in to, for `flowyard user list`."""
        return (
            ["prefect"]
            + (["s3"] if self.s3_access_key else [])
            + (["mlflow"] if self.mlflow else [])
        )


def new_key() -> str:
    return secrets.token_urlsafe(24)


def new_s3_keys() -> tuple[str, str]:
    """An S3 access key id and secret key, shaped like AWS's (20 and 40 characters)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    access = "FY" + "".join(secrets.choice(alphabet) for _ in range(18))
    return access, secrets.token_urlsafe(30)


def hash_key(key: str) -> str:
    return _HASHER.hash(key)


def verify_key(user: User, key: str) -> bool:
    """argon2 verification (deliberately slow, ~tens of ms: callers cache successes)."""
    try:
        return _HASHER.verify(user.key_hash, key)
    except (VerificationError, InvalidHashError):
        return False


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise FlowyardError(
            f"Invalid user name {name!r}.",
            fix="Use 1-63 characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter (the name goes before ':' in the login).",
        )
    return name


def load_users(path: Path) -> dict[str, User]:
    """The users file; {} when there is none yet."""
    try:
        require_private(path, "every login's hash")
    except FileNotFoundError:
        return {}
    try:
        data = tomllib.loads(path.read_text())
        return {
            name: User(
                name=name,
                role=entry["role"],
                key_hash=entry["key"],
                created=entry["created"],
                expires=entry.get("expires"),
                s3_access_key=entry.get("s3_access_key", ""),
                s3_secret_key=entry.get("s3_secret_key", ""),
                mlflow=bool(entry.get("mlflow", False)),
            )
            for name, entry in data.get("users", {}).items()
            if entry.get("role") in ROLES
        }
    except (tomllib.TOMLDecodeError, KeyError, AttributeError) as exc:
        raise FlowyardError(
            f"{path} is damaged: {exc}",
            fix="Restore it from a backup, or remove it: the admin login in secrets.toml is "
            "then the only one again (`flowyard up` recreates the file).",
        ) from exc


def save_users(path: Path, users: dict[str, User]) -> None:
    """Owner-only, atomically (the gate and the API re-read it when it changes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, users_text(users))


def users_text(users: dict[str, User], s3: bool = True) -> str:
    """users.toml's text; without the S3 keys (`s3=False`) for a copy that only checks
    logins (the compose stack's gate and API, which serve no S3)."""
    ordered = sorted(users.values(), key=lambda u: u.name)
    return HEADER + tomli_w.dumps({"users": {u.name: _entry(u, s3) for u in ordered}})


def _entry(u: User, s3: bool = True) -> dict[str, object]:
    entry: dict[str, object] = {"role": u.role, "key": u.key_hash, "created": u.created}
    if u.s3_access_key and s3:
        entry |= {"s3_access_key": u.s3_access_key, "s3_secret_key": u.s3_secret_key}
    if u.mlflow:
        entry["mlflow"] = True
    if u.expires:
        entry["expires"] = u.expires
    return entry


@contextlib.contextmanager
def editing(path: Path) -> Iterator[None]:
    """One writer at a time: `user add`, `worker join-file`, `worker remove` and `up` may run
    together, and each rewrites the whole file from what it read. The lock is on the file's
    directory (the home), so no lock file is left behind; the home lock of state-changing
    commands is a file of its own (`platform.lock`), so the two never meet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_users_file(path: Path, admin_auth_string: str) -> dict[str, User]:
    """The users, the file first made from secrets.toml's login when missing (migration)."""
    if path.exists():
        return load_users(path)
    with editing(path):
        return ensure_locked(path, admin_auth_string)


def ensure_locked(path: Path, admin_auth_string: str) -> dict[str, User]:
    """`ensure_users_file` for a caller that holds `editing(path)` already."""
    users = load_users(path)
    if path.exists():
        return users
    name, _, key = admin_auth_string.partition(":")
    users = {name: User(name, "admin", hash_key(key), now())}
    save_users(path, users)
    return users


def ensure_platform_logins(path: Path, secrets: Secrets) -> None:
    """The users file with the platform's own logins, as `up` and the compose env file need
    it: made from secrets.toml's admin login when missing, with the platform workers' login."""
    admin = secrets.prefect_auth_string.get_secret_value()
    ensure_users_file(path, admin)
    ensure_platform_worker(path, admin, secrets.get("prefect_worker_auth_string"))


def ensure_platform_worker(path: Path, admin_auth_string: str, worker_auth_string: str) -> None:
    """The platform's own workers' login (secrets.toml's `prefect_worker_auth_string`) is in
    the file with the `worker` role and that key; re-made if it was edited away or re-keyed.
    The key is checked against its hash only when the entry exists (one argon2 verify, ~0.2 s,
    at `up`)."""
    name, _, key = worker_auth_string.partition(":")
    with editing(path):
        users = ensure_locked(path, admin_auth_string)
        have = users.get(name)
        if have is not None and have.role == "worker" and verify_key(have, key):
            return
        users[name] = User(name, "worker", hash_key(key), now())
        save_users(path, users)


def check_new_user(name: str, role: str) -> None:
    """What `flowyard user add` and `worker join-file` refuse before anything is written."""
    check_name(name)
    if name == PLATFORM_WORKER:
        raise FlowyardError(
            f"{name!r} is the name of the platform's own workers' login.",
            fix="Choose another name.",
        )
    if name.startswith(SESSION_PREFIX):
        raise FlowyardError(
            f"User name {name!r} starts with {SESSION_PREFIX!r}, which SSO sessions use.",
            fix="Choose another name.",
        )
    if role not in ROLES:
        raise FlowyardError(f"Unknown role {role!r}.", fix=f"Use one of: {', '.join(ROLES)}.")


def check_removable(name: str, admin_auth_string: str) -> None:
    """The platform's own logins stay: its workers' and its commands'."""
    if name == PLATFORM_WORKER:
        raise FlowyardError(
            f"User {name!r} is the platform's own workers' login (prefect_worker_auth_string "
            "in secrets.toml): the local worker, the Dask workers, Kubernetes pods and their "
            "flow runs use it.",
            fix="Keep it; `flowyard down` stops the local worker if you want it gone.",
        )
    if name == admin_auth_string.partition(":")[0]:
        raise FlowyardError(
            f"User {name!r} is the platform's own login (prefect_auth_string in "
            "secrets.toml): `flowyard` commands use it.",
            fix="Keep it; remove the people and workers you added instead.",
        )


def add_user(path: Path, admin_auth_string: str, name: str, role: str) -> str:
    """Create `name` with `role`; returns its login `NAME:KEY` (the only time it exists)."""
    check_new_user(name, role)
    with editing(path):
        users = ensure_locked(path, admin_auth_string)
        if name in users:
            raise FlowyardError(
                f"User {name!r} exists already.",
                fix=f"Remove it first (`flowyard user remove {name}`) to give it a new key.",
            )
        key = new_key()
        users[name] = User(name, role, hash_key(key), now())  # type: ignore[arg-type]
        save_users(path, users)
    return f"{name}:{key}"


def remove_user(path: Path, admin_auth_string: str, name: str) -> User:
    check_removable(name, admin_auth_string)
    with editing(path):
        users = ensure_locked(path, admin_auth_string)
        if name not in users:
            raise FlowyardError(
                f"No user {name!r}.", fix="`flowyard user list` shows the users there are."
            )
        removed = users.pop(name)
        save_users(path, users)
    return removed


SESSION_PREFIX = "sso."


def session_name(identity: str) -> str:
    """A fresh login name for an SSO session of `identity` (an e-mail or the provider's
    subject): `sso.<identity, in the characters a name allows>.<6 random hex>`, so the audit
    log names the person and one person may hold several sessions (browsers)."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", identity.lower()).strip("-.")[:48] or "user"
    return check_name(f"{SESSION_PREFIX}{slug}.{secrets.token_hex(3)}")


def add_session(path: Path, name: str, role: str, expires: datetime) -> str:
    """Store an SSO session's login (made by the access gate after an OpenID Connect login)
    in the users file, next to the people's own, so the gate and the API's websocket check
    read it the same way; sessions past their time are dropped while the file is rewritten.
    Returns `NAME:KEY` (the only time it exists)."""
    if role not in ROLES or not name.startswith(SESSION_PREFIX):
        raise FlowyardError(f"Invalid SSO session {name!r} ({role!r}).", fix="A bug: report it.")
    key = new_key()
    with editing(path):
        users = load_users(path)
        moment = datetime.now(UTC)
        users = {n: u for n, u in users.items() if not u.expired(moment)}
        stamp = expires.isoformat(timespec="seconds")
        users[name] = User(name, role, hash_key(key), now(), stamp)  # type: ignore[arg-type]
        save_users(path, users)
    return f"{name}:{key}"


def remove_session(path: Path, name: str) -> bool:
    """End an SSO session (logout); False when there was none of that name."""
    if not name.startswith(SESSION_PREFIX):
        return False
    with editing(path):
        users = load_users(path)
        if name not in users or users[name].expires is None:
            return False
        del users[name]
        save_users(path, users)
    return True


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
