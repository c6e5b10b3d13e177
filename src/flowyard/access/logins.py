"""Checking a presented login (`NAME:KEY`) against the users file, fast.

argon2 verification takes ~0.2 s of CPU on purpose, far too slow for every API call, so a
successful verification is cached in memory, keyed by a SHA-256 of the presented login (the
login itself is not kept). The cache lives only as long as the users file is unchanged: every
check compares the file's identity (inode, size, mtime), and any change empties the cache
and re-reads the file. That is how a removed user is refused on the next request. SSO
sessions (flowyard.access.sso) are entries with an expiry: refused from then on, cached or not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from pathlib import Path

from flowyard.config.users import User, load_users, verify_key
from flowyard.errors import FlowyardError

MAX_REFUSED = 4096


class Logins:
    def __init__(self, users_file: Path) -> None:
        self._path = users_file
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        self._verified: dict[bytes, User] = {}
        # Logins that failed since the file last changed: a client retrying a wrong key (a
        # stale join file) costs one argon2 verification, not one per request.
        self._refused: set[bytes] = set()
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

    def check(self, login: str, verify: bool = True) -> User | None:
        """The user a `NAME:KEY` login belongs to; None when it is no valid login (or, with
        `verify=False`, when it was not verified since the file last changed)."""
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
        if not sep or user is None or user.expired() or not verify_key(user, key):
            with self._lock:
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

    def current(self, user: User) -> bool:
        """Whether `user` still exists with the same key and role (revocation checks)."""
        with self._lock:
            self._refresh()
            return self._users.get(user.name) == user and not user.expired()

    def check_basic(self, header: str | None, verify: bool = True) -> User | None:
        """The user of an `Authorization: Basic ...` header."""
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            login = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return self.check(login, verify)
