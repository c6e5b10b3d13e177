"""Checking a presented login (`NAME:KEY`) against the users file, fast.

argon2 verification takes ~0.2 s of CPU on purpose, far too slow for every API call, so a
successful verification is cached in memory, keyed by a SHA-256 of the presented login (the
login itself is not kept). The cache lives only as long as the users file is unchanged: every
check compares the file's identity (inode, size, mtime), and any change empties the cache
and re-reads the file. That is how a removed user is refused on the next request. SSO
sessions (flowyard.access.sso) are entries with an expiry: refused from then on, cached or not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import threading
import time
from collections import deque
from pathlib import Path

from flowyard.config.users import User, load_users, verify_key
from flowyard.errors import FlowyardError

MAX_REFUSED = 4096
# Wrong keys for an existing name: each costs one argon2 verification. Past this many from one
# client address within the window, its further unverified logins are refused at once
# (`TooManyFailures`, 429) until the window moves on: guessing keys can neither go on nor keep
# the CPU busy. Keys are 32 random bytes, so the limit guards the CPU, not the keys.
FAILED_LIMIT = 10
FAILED_WINDOW_S = 60.0
MAX_CLIENTS = 10_000


class TooManyFailures(Exception):
    """A client address past FAILED_LIMIT wrong keys in FAILED_WINDOW_S."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after:.0f} s")
        self.retry_after = retry_after

    @property
    def seconds(self) -> int:
        """Retry-After's whole seconds (at least 1)."""
        return max(1, round(self.retry_after))


class Logins:
    def __init__(self, users_file: Path) -> None:
        self._path = users_file
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._verified: dict[bytes, User] = {}
        # Logins that failed since the file last changed: a client retrying a wrong key (a
        # stale join file) costs one argon2 verification, not one per request.
        self._refused: set[bytes] = set()
        # Client address -> times of its recent failed verifications.
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            st = os.stat(self._path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        try:
            users = load_users(self._path)
        except FlowyardError:
            # A damaged or too-open file admits nobody (fail closed) until it is fixed.
            users = {}
        self._users, self._verified, self._stamp = users, {}, stamp
        self._refused = set()

    def check(self, login: str, verify: bool = True, client: str = "-") -> User | None:
        """The user a `NAME:KEY` login belongs to; None when it is no valid login (or, with
        `verify=False`, when it was not verified since the file last changed). Raises
        `TooManyFailures` instead of verifying for a `client` past its failed logins."""
        digest = hashlib.sha256(login.encode()).digest()
        with self._lock:
            self._refresh()
            hit = self._verified.get(digest)
            if hit is not None and hit.expired():
                # An SSO session past its time (flowyard.access.sso): refused from then on.
                return None
            if hit is not None or digest in self._refused:
                return hit
            name, sep, key = login.partition(":")
            user = self._users.get(name)
            stamp = self._stamp
        if not verify:
            return None
        # Only a wrong key for an existing name costs a verification (and counts).
        costly = sep and user is not None and not user.expired()
        if costly:
            self._check_failures(client)
        if user is None or not costly or not verify_key(user, key):
            with self._lock:
                if costly:
                    self._failures.setdefault(client, deque()).append(time.monotonic())
                if len(self._refused) >= MAX_REFUSED:
                    self._refused.clear()
                # Only if the file did not change meanwhile (the user may exist now).
                if self._stamp == stamp:
                    self._refused.add(digest)
            return None
        with self._lock:
            # Only if the file did not change while verifying (the user may be gone).
            if self._stamp == stamp:
                self._verified[digest] = user
        return user

    def _check_failures(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > MAX_CLIENTS:
                self._failures.clear()
            times = self._failures.get(client)
            if times is None:
                return
            while times and times[0] <= now - FAILED_WINDOW_S:
                times.popleft()
            if not times:
                del self._failures[client]
            elif len(times) >= FAILED_LIMIT:
                raise TooManyFailures(times[0] + FAILED_WINDOW_S - now)

    def current(self, user: User) -> bool:
        """Whether `user` still exists with the same key and role (revocation checks)."""
        with self._lock:
            self._refresh()
            return self._users.get(user.name) == user and not user.expired()

    def check_basic(
        self, header: str | None, verify: bool = True, client: str = "-"
    ) -> User | None:
        """The user of an `Authorization: Basic ...` header."""
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            login = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.check(login, verify, client)

    async def check_request(self, headers: dict[str, str]) -> User | None:
        """The user of a request Caddy forwarded (lower-case header names): a cached login at
        once; a miss costs an argon2 verification (~0.2 s of CPU), made off the event loop so
        other requests are not held up. Raises TooManyFailures for a client address past
        the limit (Caddy sets X-Forwarded-For to the client's address; it trusts no
        incoming one)."""
        auth = headers.get("authorization")
        user = self.check_basic(auth, verify=False)
        if user is None and auth:
            client = headers.get("x-forwarded-for", "-").split(",")[-1].strip()
            user = await asyncio.to_thread(self.check_basic, auth, True, client)
        return user
