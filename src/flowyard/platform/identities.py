"""One person or worker, one identity everywhere: Prefect login, S3 keys, MLflow login.

Stock Prefect, SeaweedFS and MLflow each have their own accounts; Flowyard makes them follow
users.toml. `add` mints all of a user's credentials at once (shown once by the CLI) and
`remove` revokes all of them, each within seconds:

- Prefect: the gate re-reads users.toml on its next request (`flowyard.access.logins`).
- S3: SeaweedFS's identity file is rendered from users.toml and weed re-reads it on SIGHUP,
  without a restart; we wait until the new key is accepted (or the removed one refused).
- MLflow: a login of the same name, made and deleted through its auth API by its admin
  (`services.mlflow.create_user`).

All under users.toml's writer lock, so concurrent commands never render a stale identity
file. A failing step undoes the earlier ones: users.toml, S3 and MLflow stay consistent.
When the platform is down, S3 keys take effect at the next `flowyard up` (which renders the
identity file from users.toml), but with MLflow on, a user (who gets an MLflow login) is
refused up front, before anything is written (MLflow keeps its logins in its own store).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xmlrpc.client import Error as RpcError

from botocore.exceptions import BotoCoreError, ClientError

from flowyard.config import users as users_file
from flowyard.config.context import Context
from flowyard.config.users import ROLES, User
from flowyard.errors import FlowyardError
from flowyard.platform.supervisor import Supervisor
from flowyard.services import mlflow, seaweedfs

# How long `add`/`remove` wait for weed to have re-read its identities.
S3_RELOAD_TIMEOUT = 5.0


@dataclass(frozen=True)
class Minted:
    """What a new user gets, in clear, the only time it exists."""

    user: User
    prefect_auth_string: str
    mlflow_password: str | None


def wants_mlflow(ctx: Context, role: str) -> bool:
    return ctx.config.mlflow.enabled and role in ROLES


def owns_s3(ctx: Context) -> bool:
    """The platform's own store: it can mint keys (an external one cannot)."""
    return ctx.config.object_store.kind == "seaweedfs"


# The fix when MLflow is down at `add`: the platform up, or a login without the per-user
# identities (a compose stack's home: its S3 and MLflow have none, docs/access.md).
ADD_FIX = (
    "Start the platform (`flowyard up`) and run the command again; nothing was changed. "
    "For a compose stack's home (or a Prefect login alone), add --prefect-only."
)


def add(ctx: Context, name: str, role: str, prefect_only: bool = False) -> Minted:
    """Mint `name`'s logins; `prefect_only`: its Prefect login alone (no S3 keys, no MLflow
    login), which needs nothing running."""
    users_file.check_new_user(name, role)
    path = ctx.paths.users_file
    admin = ctx.secrets.prefect_auth_string.get_secret_value()
    with users_file.editing(path):
        before = users_file.ensure_locked(path, admin)
        if name in before:
            raise FlowyardError(
                f"User {name!r} exists already.",
                fix=f"Remove it first (`flowyard user remove {name}`) to give it a new key.",
            )
        key = users_file.new_key()
        s3 = users_file.new_s3_keys() if owns_s3(ctx) and not prefect_only else ("", "")
        with_mlflow = wants_mlflow(ctx, role) and not prefect_only
        user = User(
            name,
            role,  # type: ignore[arg-type]
            users_file.hash_key(key),
            users_file.now(),
            s3_access_key=s3[0],
            s3_secret_key=s3[1],
            mlflow=with_mlflow,
        )
        password = None
        if with_mlflow:
            password = users_file.new_key()
            # First: it is the step that needs the running server, and it undoes itself.
            mlflow.check_running(ctx, f"create the MLflow login {name!r}", fix=ADD_FIX)
            mlflow.create_user(ctx, name, password, role)
        after = {**before, name: user}
        try:
            users_file.save_users(path, after)
            apply_s3(ctx, after, wait_for=(user, True))
        except BaseException:
            # Nothing half-made: back to the users and identities there were.
            users_file.save_users(path, before)
            quietly(lambda: apply_s3(ctx, before, revoked=[user]))
            if with_mlflow:
                quietly(lambda: mlflow.delete_user(ctx, name, missing_ok=True))
            raise
    return Minted(user, f"{name}:{key}", password)


def remove(ctx: Context, name: str) -> User:
    """Revoke everything of `name`: Prefect login, S3 keys, MLflow login."""
    path = ctx.paths.users_file
    admin = ctx.secrets.prefect_auth_string.get_secret_value()
    users_file.check_removable(name, admin)
    with users_file.editing(path):
        before = users_file.ensure_locked(path, admin)
        if name not in before:
            raise FlowyardError(
                f"No user {name!r}.", fix="`flowyard user list` shows the users there are."
            )
        user = before[name]
        with_mlflow = user.mlflow and ctx.config.mlflow.enabled
        if user.mlflow and not with_mlflow:
            # MLflow turned off since: its login stays in MLflow's (unserved) store until
            # MLflow's next start deletes it, before anyone can use it again.
            mlflow.revoke_later(ctx, name)
        if with_mlflow:
            # Refused up front, before anything changes, when MLflow is down. Then deleted
            # first: while the user is still listed, a failure here leaves everything in
            # place, and `remove` again finishes the job (a missing login is no error).
            mlflow.check_running(ctx, f"remove the MLflow login {name!r}")
            mlflow.delete_user(ctx, name, missing_ok=True)
        after = {n: u for n, u in before.items() if n != name}
        users_file.save_users(path, after)  # the Prefect login: refused on the next request
        apply_s3(ctx, after, revoked=[user], wait_for=(user, False))
    return user


def apply_s3(
    ctx: Context,
    users: dict[str, User],
    revoked: list[User] | None = None,
    wait_for: tuple[User, bool] | None = None,
) -> None:
    """Make the running S3 gateway hold exactly `users`' identities (plus the platform's).

    The identity file is written whenever it exists (weed may be starting or restarting,
    and reads it then); weed is signalled and waited for only when it runs: otherwise
    `flowyard up` renders the file from users.toml before it starts weed.
    `wait_for` = (user, present): wait until that user's key is accepted (present) or
    refused. `revoked` users are overwritten with a key no one holds
    (`seaweedfs.render_s3_config`)."""
    if not owns_s3(ctx):
        return
    running = _weed_running(ctx)
    if running or Path(seaweedfs.s3_config_path(ctx)).exists():
        seaweedfs.write_s3_config(ctx, users.values(), revoked or [])
    if not running:
        return
    try:
        Supervisor(ctx.paths).signal_process(seaweedfs.NAME, "HUP")
    except (OSError, RpcError) as exc:
        raise FlowyardError(
            f"Could not make the object store re-read its identities: {exc}.",
            fix="Check `flowyard status`; `flowyard restart seaweedfs` reloads them too.",
        ) from exc
    if wait_for is None or not wait_for[0].s3_access_key:
        return
    user, present = wait_for
    deadline = time.monotonic() + S3_RELOAD_TIMEOUT
    while _s3_accepts(ctx, user) != present:
        if time.monotonic() > deadline:
            raise FlowyardError(
                f"The object store did not {'accept' if present else 'refuse'} the S3 key of "
                f"{user.name!r} within {S3_RELOAD_TIMEOUT:.0f} s of re-reading its identities.",
                fix="Read `flowyard logs seaweedfs`.",
            )
        time.sleep(0.05)


def _weed_running(ctx: Context) -> bool:
    sup = Supervisor(ctx.paths)
    if not sup.running():
        return False
    try:
        return sup.info(seaweedfs.NAME)["statename"] == "RUNNING"
    except (OSError, RpcError):
        return False


def _s3_accepts(ctx: Context, user: User) -> bool:
    """Whether weed knows the key: any answer but InvalidAccessKeyId (a viewer's ListBuckets
    is answered with only the buckets it may see)."""
    client = seaweedfs.s3_client(ctx, keys=(user.s3_access_key, user.s3_secret_key))
    try:
        client.list_buckets()  # type: ignore[attr-defined]
    except ClientError as exc:
        return exc.response.get("Error", {}).get("Code") not in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        )
    except BotoCoreError:
        return False
    return True


def quietly(step: Callable[[], object]) -> None:
    """A rollback step: its own failure must not hide the error that caused the rollback
    (which the caller re-raises)."""
    with contextlib.suppress(Exception):
        step()
