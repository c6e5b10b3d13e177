"""SSO: browser login through OpenID Connect (authorization code + PKCE), run by the access gate.

Stock Prefect has no login of its own beyond one shared auth string its UI asks for and keeps
in the browser's localStorage (key `prefect-password`, base64 of what was typed), sending it
as `Authorization: Basic` on every API call and as the first-message token of its
websockets. So an SSO login here ends in exactly such a credential: after the provider's
callback the gate mints a short-lived login of its own (`sso.<e-mail>.<random>:<key>`, the
role from the ID token's groups, `access.sso.session_hours`), stores its argon2 hash in
users.toml like any other login (with an expiry), and answers a page that puts it where the
UI keeps its login. Then the UI, the API (the gate's check) and websockets (the API's
in-band check) need no other path, and revocation works as for any login: logout removes
the entry, expiry refuses it, and open websockets close within a second
(flowyard.access.prefect_app).

The OpenID Connect client work is authlib's (discovery, PKCE S256, state and nonce,
the token exchange, the ID token's signature against the provider's JWKS, its issuer,
audience, expiry and nonce); TLS verification stays on (httpx's defaults), and http is
accepted only for a loopback issuer (the config's rule, and authlib's own).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import html
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from flowyard.access import audit
from flowyard.access.gate import SSO_FILE_VAR
from flowyard.access.logins import Logins, TooManyFailures
from flowyard.config.secrets import require_private
from flowyard.config.users import SESSION_PREFIX, add_session, remove_session, session_name

LOGIN_PATH = "/auth/login"
CALLBACK_PATH = "/auth/callback"
LOGOUT_PATH = "/auth/logout"
# Where Prefect's UI keeps its login (prefect/server/ui, the UI's auth store): base64 of
# `user:password`, sent as `Authorization: Basic` and as the websocket token.
UI_STORAGE_KEY = "prefect-password"
STATE_COOKIE = "flowyard_sso_state"
# A login must come back from the provider within this; pending logins beyond the cap are
# dropped oldest first (each costs one entry, made by anyone who opens /auth/login).
PENDING_TTL_S = 600
MAX_PENDING = 10_000
# Higher wins when a login's groups map to several roles.
RANK = {"viewer": 1, "operator": 2, "admin": 3}
log = logging.getLogger("flowyard.access")


@dataclass(frozen=True)
class SsoSettings:
    issuer: str
    client_id: str
    redirect_uri: str
    scopes: list[str]
    groups_claim: str
    roles: dict[str, str]
    session_hours: float
    secret_file: str

    @classmethod
    def from_file(cls, path: Path) -> SsoSettings:
        return cls(**json.loads(path.read_text()))


@dataclass
class Pending:
    nonce: str
    code_verifier: str
    created: float = field(default_factory=time.monotonic)


Response = tuple[int, dict[str, str], bytes]


def role_for(groups: Any, roles: dict[str, str]) -> str | None:
    """The highest role any of `groups` maps to; None for none (the login is refused)."""
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list):
        return None
    found = [roles[g] for g in groups if isinstance(g, str) and g in roles]
    return max(found, key=RANK.__getitem__) if found else None


def identity_of(claims: Any) -> str:
    """Who signed in, for the session's name and the audit log: the e-mail unless the provider
    says it is unverified, else the subject. It names; it grants nothing (groups do)."""
    email = claims.get("email")
    if isinstance(email, str) and email and claims.get("email_verified") is not False:
        return email
    return str(claims["sub"])


class Sso:
    def __init__(
        self, settings: SsoSettings, users_file: Path, logins: Logins, writer: Any
    ) -> None:
        from authlib.integrations.starlette_client import OAuth

        self.settings = settings
        self.users_file = users_file
        self.logins = logins
        self.writer: audit.AuditWriter | None = writer
        secret_path = Path(settings.secret_file)
        secret = None
        if secret_path.exists():
            require_private(secret_path, "the SSO client secret")
            secret = secret_path.read_text().strip() or None
        oauth = OAuth()
        # authlib's client: discovery from the issuer, PKCE (S256), state and nonce, the
        # token exchange and the ID token checks. Without a client secret it is a public
        # client (PKCE only), as providers allow for browser logins.
        self.client: Any = oauth.register(
            "flowyard",
            client_id=settings.client_id,
            client_secret=secret,
            server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
            client_kwargs={
                "scope": " ".join(settings.scopes),
                "code_challenge_method": "S256",
                **({} if secret else {"token_endpoint_auth_method": "none"}),
            },
        )
        self.pending: dict[str, Pending] = {}

    async def handle(self, method: str, path: str, query: str, headers: dict[str, str]) -> Response:
        try:
            if path == LOGIN_PATH and method == "GET":
                return await self.login()
            if path == CALLBACK_PATH and method == "GET":
                return await self.callback(query, headers)
            if path == LOGOUT_PATH and method == "GET":
                return _page(200, "Signing out", _LOGOUT_SCRIPT)
            if path == LOGOUT_PATH and method == "POST":
                return await self.logout(headers)
        except Exception:
            # The provider unreachable or answering nonsense: the person gets a page, the
            # log gets the details (never a token: authlib's errors carry none).
            log.exception("SSO %s %s failed", method, path)
            if path == CALLBACK_PATH:
                self._audit("-", 502)
            return _page(502, "Sign-in failed", _p("The sign-in provider could not be used."))
        return _page(404, "Not found", _p("No such page."))

    async def login(self) -> Response:
        made = await self.client.create_authorization_url(self.settings.redirect_uri)
        metadata = await self.client.load_server_metadata()
        if metadata.get("issuer", "").rstrip("/") != self.settings.issuer:
            # The discovery document must be the configured issuer's own (OpenID Connect
            # Discovery 1.0, 4.3); the ID token's `iss` is then checked against it.
            raise RuntimeError(f"discovery issuer {metadata.get('issuer')!r} is not configured")
        self._prune()
        self.pending[made["state"]] = Pending(made["nonce"], made["code_verifier"])
        cookie = (
            f"{STATE_COOKIE}={made['state']}; Path=/auth; Max-Age={PENDING_TTL_S}; "
            "HttpOnly; Secure; SameSite=Lax"
        )
        return 302, {"location": made["url"], "set-cookie": cookie, **_NO_STORE}, b""

    async def callback(self, query: str, headers: dict[str, str]) -> Response:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        state = params.get("state", "")
        pending = self.pending.pop(state, None)
        cookie = SimpleCookie(headers.get("cookie", ""))
        bound = cookie[STATE_COOKIE].value if STATE_COOKIE in cookie else ""
        # The state must be one this gate handed out, unused, recent, and this browser's
        # own (the cookie): a callback link made for someone else does not log anyone in.
        if (
            pending is None
            or time.monotonic() - pending.created > PENDING_TTL_S
            or not hmac.compare_digest(bound.encode(), state.encode())
        ):
            self._audit("-", 400)
            return _page(400, "Sign-in refused", _p("This sign-in link is not valid (state)."))
        if "error" in params or "code" not in params:
            self._audit("-", 403)
            reason = params.get("error_description") or params.get("error") or "no code"
            return _page(403, "Sign-in refused", _p(f"The provider refused: {reason}."))
        token = await self.client.fetch_access_token(
            redirect_uri=self.settings.redirect_uri,
            code=params["code"],
            code_verifier=pending.code_verifier,
        )
        claims = await self.client.parse_id_token(token, nonce=pending.nonce)
        if claims is None:
            raise RuntimeError("the provider sent no ID token")
        identity = identity_of(claims)
        role = role_for(claims.get(self.settings.groups_claim), self.settings.roles)
        if role is None:
            self._audit(f"sso:{identity}", 403)
            return _page(
                403,
                "Sign-in refused",
                _p(
                    f"{identity} is in no group that has a role here "
                    f"(claim {self.settings.groups_claim!r}). Ask an admin."
                ),
            )
        expires = datetime.now(UTC) + timedelta(hours=self.settings.session_hours)
        name = session_name(identity)
        login = await asyncio.to_thread(add_session, self.users_file, name, role, expires)
        self._audit(name, 200)
        stored = base64.b64encode(login.encode()).decode()
        script = (
            f"<script>localStorage.setItem({json.dumps(UI_STORAGE_KEY)}, "
            f"{json.dumps(stored)}); location.replace('/');</script>"
        )
        body = _p(f"Signed in as {identity} ({role}). Opening the dashboard...") + script
        clear = f"{STATE_COOKIE}=; Path=/auth; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
        status, out, page = _page(200, "Signed in", body)
        return status, {**out, "set-cookie": clear}, page

    async def logout(self, headers: dict[str, str]) -> Response:
        """Ends the SSO session whose login the request carries (the logout page sends the
        one the UI keeps). Logins of people and workers are never removed here."""
        try:
            user = await self.logins.check_request(headers)
        except TooManyFailures as exc:
            return 429, {**_NO_STORE, "retry-after": str(exc.seconds)}, b""
        if user is None or not user.name.startswith(SESSION_PREFIX):
            return 204, dict(_NO_STORE), b""
        await asyncio.to_thread(remove_session, self.users_file, user.name)
        if self.writer is not None:
            self.writer.record(user.name, "POST", "POST /auth/logout", LOGOUT_PATH, 204, "gate")
        return 204, dict(_NO_STORE), b""

    def _prune(self) -> None:
        now = time.monotonic()
        for state in [s for s, p in self.pending.items() if now - p.created > PENDING_TTL_S]:
            del self.pending[state]
        while len(self.pending) >= MAX_PENDING:
            del self.pending[next(iter(self.pending))]

    def _audit(self, user: str, status: int) -> None:
        if self.writer is not None:
            self.writer.record(user, "GET", "GET /auth/callback", CALLBACK_PATH, status, "gate")


_NO_STORE = {"cache-control": "no-store"}


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _page(status: int, title: str, body: str) -> Response:
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Flowyard: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}"
        f"<p><a href='{LOGIN_PATH}'>Sign in</a> · <a href='/'>Dashboard</a></p></body></html>"
    )
    headers = {"content-type": "text/html; charset=utf-8", **_NO_STORE}
    return status, headers, page.encode()


# The UI's stored login is sent to end its session, then forgotten by this browser.
_LOGOUT_SCRIPT = (
    "<p id='s'>Signing out...</p><script>"
    f"const k = {json.dumps(UI_STORAGE_KEY)}; const v = localStorage.getItem(k);"
    f"const done = () => {{ localStorage.removeItem(k); "
    "document.getElementById('s').textContent = 'Signed out.'; };"
    f"if (v) {{ fetch({json.dumps(LOGOUT_PATH)}, {{method: 'POST', "
    "headers: {Authorization: 'Basic ' + v}}).finally(done); } else { done(); }"
    "</script>"
)


def sso_from_env(env: dict[str, str], users_file: Path, logins: Logins, writer: Any) -> Sso | None:
    path = env.get(SSO_FILE_VAR)
    if not path:
        return None
    return Sso(SsoSettings.from_file(Path(path)), users_file, logins, writer)
