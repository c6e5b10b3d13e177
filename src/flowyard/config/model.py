"""The one typed configuration model.

Every file a service reads (Caddyfile, supervisord.conf, Prefect profile, compose env) is
rendered from `FlowyardConfig`, so native and container modes cannot drift. Values come from
`$FLOWYARD_HOME/flowyard.toml`, overridden by `FLOWYARD_*` environment variables with `__`
between levels (e.g. `FLOWYARD_PROXY__HTTPS_PORT=9443`). Secrets never live here: see
`flowyard.config.secrets`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Port = Annotated[int, Field(ge=1, le=65535)]
# SeaweedFS also binds each port + GRPC_OFFSET, so its ports must leave room for that.
StorePort = Annotated[int, Field(ge=1, le=55535)]
# Names Prefect, S3 and Postgres all accept: lowercase, digits and dashes.
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
LOOPBACK = "127.0.0.1"
GRPC_OFFSET = 10000

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def check_host(value: str) -> str:
    """A DNS name or an IP address (IPv6 with or without brackets); the unbracketed form."""
    if (
        value.startswith("[")
        and value.endswith("]")
        and isinstance(_ip(value[1:-1]), ipaddress.IPv6Address)
    ):
        value = value[1:-1]
    ip = _ip(value)
    if ip is not None:
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(
                "is not an address clients can reach; use this machine's name or IP address "
                "(proxy.bind sets the listening address)"
            )
        return value
    labels = value.split(".")
    if (
        len(value) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        # All-numeric names are malformed IP addresses (e.g. 999.1.1.1), not host names.
        or labels[-1].isdigit()
    ):
        raise ValueError(
            "must be a DNS name (letters, digits, hyphens and dots, e.g. flows.example.com) or "
            "an IP address, without scheme, port, path or spaces"
        )
    return value


def is_loopback_host(host: str) -> bool:
    """localhost (any case) and loopback IPs (127.0.0.0/8, ::1)."""
    ip = _ip(host.strip("[]"))
    return host.lower() == "localhost" if ip is None else ip.is_loopback


def url_host(host: str) -> str:
    """`host` as it goes into a URL: IPv6 literals in brackets."""
    return f"[{host}]" if isinstance(_ip(host), ipaddress.IPv6Address) else host


def _check_bind(value: str | None) -> str | None:
    if value is None:
        return None
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if _ip(value) is None:
        raise ValueError("must be an IP address (e.g. 127.0.0.1, 0.0.0.0 for all interfaces, ::1)")
    return value


_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)


def _check_email(value: str | None) -> str | None:
    if value is None:
        return None
    if not _EMAIL.fullmatch(value) or value.split("@")[1].rsplit(".", 1)[-1].isdigit():
        raise ValueError(
            "must be one e-mail address like ops@example.com (no spaces, newlines or quotes)"
        )
    return value


def _check_endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    from urllib.parse import urlsplit

    problem = None
    if any(ch.isspace() for ch in value):
        problem = "contains whitespace"
    else:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            problem = str(exc)
        else:
            if parts.scheme not in ("http", "https"):
                problem = "needs http:// or https://"
            elif not parts.hostname:
                problem = "has no host"
            elif parts.username or parts.password:
                problem = "must not hold credentials (the S3 keys live in secrets.toml)"
            elif parts.query or parts.fragment:
                problem = "must not have a query or fragment"
            else:
                try:
                    check_host(parts.hostname)
                except ValueError as exc:
                    problem = f"host {parts.hostname!r} {exc}"
    if problem:
        raise ValueError(f"{problem}; give a URL like https://s3.eu-west-1.amazonaws.com")
    return value


def _check_bucket(value: str) -> str:
    """S3's bucket naming rules (general purpose buckets)."""
    if (
        not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value)
        or ".." in value
        or ".-" in value
        or "-." in value
        or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value)
        or value.startswith(("xn--", "sthree-"))
        or value.endswith(("-s3alias", "--ol-s3"))
    ):
        raise ValueError(
            "is not a valid S3 bucket name: 3-63 characters, lowercase letters, digits, hyphens "
            "and dots, starting and ending with a letter or digit, not like an IP address"
        )
    return value


Bucket = Annotated[str, AfterValidator(_check_bucket)]


class _Section(BaseModel):
    # A typo in flowyard.toml must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProxyConfig(_Section):
    """Caddy: the only component that listens beyond loopback."""

    host: str = Field(
        "localhost",
        description="Public host name (or IP) users and remote workers reach the platform by; "
        "it is in every URL and in the TLS certificate.",
    )
    bind: str | None = Field(
        None,
        description="Address Caddy listens on (an IP). Default: the host's own loopback address "
        "when host is loopback (localhost: 127.0.0.1; 127.0.0.0/8; ::1), else all interfaces.",
    )
    https_port: Port = Field(
        8443, description="HTTPS port for UI, API and MLflow (443 in production)."
    )
    http_port: Port = Field(8080, description="Plain HTTP port; it only redirects to HTTPS.")
    s3_https_port: Port = Field(
        8444, description="HTTPS port of the object store (444 in production)."
    )
    admin_port: Port = Field(2019, description="Caddy's admin API, loopback only.")
    tls: Literal["internal", "acme"] = Field(
        "internal",
        description="internal: Caddy's own CA (distribute its root certificate); "
        "acme: a public certificate for a public domain.",
    )
    acme_email: str | None = Field(None, description="Contact e-mail for ACME (tls = acme).")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str | None) -> str | None:
        return _check_bind(v)

    @field_validator("acme_email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return _check_email(v)

    @model_validator(mode="after")
    def _acme_needs_public_name(self) -> ProxyConfig:
        if self.tls == "acme" and (is_loopback_host(self.host) or _ip(self.host) is not None):
            raise ValueError(
                f"proxy.tls = 'acme' needs a public DNS name, and proxy.host is {self.host!r}; "
                "set proxy.host to the public domain, or use tls = 'internal'"
            )
        return self

    @property
    def listen_address(self) -> str:
        """proxy.bind, else the loopback address a loopback host names, else all interfaces."""
        if self.bind:
            return self.bind
        if is_loopback_host(self.host):
            return LOOPBACK if self.host.lower() == "localhost" else self.host
        return "0.0.0.0"

    @property
    def url_host(self) -> str:
        return url_host(self.host)

    @property
    def url(self) -> str:
        return f"https://{self.url_host}" + (
            "" if self.https_port == 443 else f":{self.https_port}"
        )

    @property
    def s3_url(self) -> str:
        return f"https://{self.url_host}" + (
            "" if self.s3_https_port == 443 else f":{self.s3_https_port}"
        )


class PostgresConfig(_Section):
    port: Port = Field(15432, description="PostgreSQL port, loopback only.")
    system_user: str = Field(
        "flowyard",
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="Unprivileged user PostgreSQL runs as when flowyard runs as root "
        "(PostgreSQL refuses to run as root); created if missing.",
    )
    max_connections: int = Field(100, ge=10, le=10000, description="PostgreSQL max_connections.")
    shared_buffers: str = Field(
        "128MB", pattern=r"^\d+(kB|MB|GB)$", description="PostgreSQL shared_buffers."
    )


class RedisConfig(_Section):
    """Redis carries Prefect's events between the API and its background services."""

    port: Port = Field(
        16379,
        description="Redis port in containers; natively Redis listens on an owner-only "
        "Unix socket and no port.",
    )
    maxmemory: str = Field(
        "256mb",
        pattern=r"^[1-9][0-9]*(kb|mb|gb)$",
        description="Redis memory ceiling; when reached, writes fail loudly (noeviction) "
        "rather than drop Prefect's leases.",
    )


class ObjectStoreConfig(_Section):
    kind: Literal["seaweedfs", "external"] = Field(
        "seaweedfs",
        description="seaweedfs: run the bundled store; external: use endpoint_url "
        "(AWS, Ceph, MinIO, ...) with the keys in the secrets file.",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint for kind = external (e.g. https://s3.eu-west-1.amazonaws.com).",
    )
    region: str = Field(
        "us-east-1",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="S3 region sent in signatures.",
    )
    s3_port: StorePort = Field(
        8333, description="SeaweedFS S3 gateway, loopback only; S3 keys required."
    )
    master_port: StorePort = Field(
        9333, description="SeaweedFS master, loopback only; mutual TLS natively."
    )
    volume_port: StorePort = Field(
        9340, description="SeaweedFS volume server, loopback only; mutual TLS natively."
    )
    filer_port: StorePort = Field(
        8888, description="SeaweedFS filer, loopback only; mutual TLS natively."
    )
    admin_port: StorePort = Field(
        23646, description="SeaweedFS admin server, loopback only; mutual TLS natively."
    )
    results_bucket: Bucket = Field("flowyard-results", description="Bucket for Prefect results.")
    code_bucket: Bucket = Field("flowyard-code", description="Bucket for deployed flow code.")
    artifacts_bucket: Bucket = Field(
        "flowyard-artifacts", description="Bucket for MLflow artifacts."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return _check_endpoint(v)

    @model_validator(mode="after")
    def _external_needs_endpoint(self) -> ObjectStoreConfig:
        if self.kind == "external" and not self.endpoint_url:
            raise ValueError(
                "object_store.endpoint_url is required when object_store.kind = 'external'"
            )
        seen: dict[str, str] = {}
        for name in ("results_bucket", "code_bucket", "artifacts_bucket"):
            bucket = getattr(self, name)
            if bucket in seen:
                raise ValueError(
                    f"object_store.{name} and object_store.{seen[bucket]} are both {bucket!r}; "
                    "give each its own bucket"
                )
            seen[bucket] = name
        return self

    def port_settings(self) -> dict[str, int]:
        ports = {}
        for name in ("s3_port", "master_port", "volume_port", "filer_port", "admin_port"):
            port = getattr(self, name)
            ports[f"object_store.{name}"] = port
            # SeaweedFS's convention: each gRPC port is its HTTP port + 10000. Natively
            # every one but S3's HTTP port requires a client certificate (seaweedfs.py).
            ports[f"object_store.{name} + {GRPC_OFFSET} (gRPC)"] = port + GRPC_OFFSET
        return ports

    @property
    def buckets(self) -> list[str]:
        return [self.results_bucket, self.code_bucket, self.artifacts_bucket]


class PrefectConfig(_Section):
    port: Port = Field(
        4200, description="Prefect API and UI, loopback only (reached through Caddy)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Log level of the Prefect server processes."
    )
    migration_timeout: int = Field(600, ge=10, description="Seconds a database migration may take.")


class QueueSpec(_Section):
    name: Slug = Field(description="Work queue name.")
    priority: int = Field(1, ge=1, description="1 is served first when the pool is saturated.")
    concurrency_limit: int | None = Field(None, ge=0, description="Runs at once from this queue.")


# The fast worker this package registers (flowyard.worker); Prefect's own types work too.
DEFAULT_POOL_TYPE = "flowyard"


class PoolSpec(_Section):
    name: Slug = Field(description="Work pool name.")
    type: str | None = Field(
        None,
        description="Prefect worker type: flowyard (warm start, no poll wait), process, "
        "kubernetes, ... Unset: flowyard for a new pool; an existing pool keeps its type.",
    )
    concurrency_limit: int | None = Field(None, ge=0, description="Runs at once in the pool.")
    namespace: Slug | None = Field(
        None,
        description="Kubernetes pools: the namespace flow-run pods run in, where `flowyard "
        "render kubernetes` puts the worker's Secret and ConfigMaps. Unset: prefect.",
    )
    queues: list[QueueSpec] = Field(
        default_factory=lambda: [QueueSpec(name="default")], description="The pool's queues."
    )


class GlobalLimitSpec(_Section):
    name: Slug = Field(description="Limit name, used with prefect.concurrency(...).")
    limit: int = Field(ge=0, description="Slots.")
    slot_decay_per_second: float = Field(0.0, ge=0, description="Turns the limit into a rate.")


class WorkerConfig(_Section):
    enabled: bool = Field(True, description="Run a worker for the default pool on this machine.")
    pool: Slug = Field("default", description="Work pool the local worker serves.")
    concurrency: int | None = Field(
        None, ge=1, description="Flow runs at once; default: the machine's CPU count."
    )
    system_user: str = Field(
        "flowyard-flows",
        description="Unprivileged user the local worker, and so every flow run, runs as when "
        "flowyard runs as root; created if missing. Must not be postgres.system_user.",
    )

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or (os.cpu_count() or 1)


class RetentionConfig(_Section):
    """Prefect's DB vacuum: how long history is kept."""

    events_days: int = Field(7, ge=1, description="Days of events kept.")
    flow_runs_days: int = Field(90, ge=1, description="Days of finished flow runs kept.")


class HygieneConfig(_Section):
    zombie_heartbeat_seconds: int = Field(
        120,
        ge=60,
        description="A running flow run whose heartbeat (sent every 30 s) stops this long is "
        "marked Crashed. Heartbeats lost on their way (a proxy or network outage) count as "
        "missing: keep it at least 60 s above the longest such outage to ride out; an outage "
        "of the API itself is held (docs/operations.md).",
    )
    late_after_seconds: int = Field(
        15, ge=5, description="A scheduled run this late is marked Late."
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


# Roles an SSO login may get (`access.sso.roles`); `worker` is for machines, minted by
# `flowyard worker join-file`, never by a browser login.
SSO_ROLES = ("viewer", "operator", "admin")


class SsoConfig(_Section):
    """Browser login through OpenID Connect (authorization code + PKCE), natively: the access
    gate runs the client (docs/access.md, "SSO"). The client secret is not kept here: it is
    `$FLOWYARD_HOME/sso-client-secret` (0600), set by `flowyard user sso-secret`."""

    enabled: bool = Field(False, description="Offer SSO login at /auth/login.")
    issuer: str | None = Field(
        None,
        description="The provider's issuer URL (discovery at ISSUER/.well-known/"
        "openid-configuration); https, or http for a loopback address only.",
    )
    client_id: str | None = Field(None, description="The client id registered at the provider.")
    scopes: list[str] = Field(
        ["openid", "email", "profile"],
        description="Scopes asked for; must include openid (add the provider's groups scope "
        "if it sends groups only when asked).",
    )
    groups_claim: str = Field("groups", description="ID token claim listing the groups.")
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="Group -> role (viewer, operator, admin); a login in several mapped groups "
        "gets the highest role, one in none is refused.",
    )
    session_hours: float = Field(
        12, gt=0, le=720, description="How long an SSO session's login is valid."
    )

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https:// URL, e.g. https://login.example.com/realms/x")
        # Plain http only for a provider on this machine's loopback (a test or development
        # provider): tokens then never cross a network. Anything else is TLS, verified.
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("must be https:// (http:// only for a loopback address)")
        if parts.query or parts.fragment:
            raise ValueError("must have no query or fragment")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _complete(self) -> SsoConfig:
        for group, role in self.roles.items():
            if role not in SSO_ROLES:
                raise ValueError(
                    f"access.sso.roles: group {group!r} maps to unknown role {role!r}; "
                    f"use one of {', '.join(SSO_ROLES)}"
                )
        if "openid" not in self.scopes:
            raise ValueError("access.sso.scopes must include 'openid'")
        if self.enabled:
            missing = [n for n in ("issuer", "client_id") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    f"access.sso.enabled needs access.sso.{' and access.sso.'.join(missing)}"
                )
            if not self.roles:
                raise ValueError(
                    "access.sso.enabled needs access.sso.roles (group -> role): without it "
                    "every SSO login would be refused"
                )
        return self


class AccessConfig(_Section):
    """Team access: per-person and per-worker logins and roles (docs/access.md)."""

    audit_retention_days: int = Field(
        90, ge=1, description="Days of audit log (mutations and refusals) kept in PostgreSQL."
    )
    sso: SsoConfig = Field(default_factory=SsoConfig)


class MlflowConfig(_Section):
    enabled: bool = Field(True, description="Run the MLflow tracking server under /mlflow.")
    port: Port = Field(5000, description="MLflow server, loopback only (reached through Caddy).")


class DaskConfig(_Section):
    """A Dask cluster for flows' tasks (prefect-dask's DaskTaskRunner): a scheduler and local
    workers under supervisor, reached through the proxy with a client certificate."""

    enabled: bool = Field(
        False,
        description="Run a Dask scheduler and local Dask workers (off by default: they idle at "
        "about 180 MB with one worker and add a public port; docs/scaling.md).",
    )
    https_port: Port = Field(
        8786,
        description="Port the proxy serves the scheduler on (wss://, TLS with a client "
        "certificate issued by the platform's Dask CA).",
    )
    scheduler_port: Port = Field(
        18786,
        description="The scheduler's own port, loopback only, mutual TLS (reached through Caddy).",
    )
    worker_port: Port = Field(
        18787,
        description="First local Dask worker's port, loopback only, mutual TLS; worker i "
        "listens on worker_port + i.",
    )
    workers: int = Field(1, ge=1, le=64, description="Local Dask worker processes.")
    threads: int | None = Field(
        None, ge=1, description="Threads per local worker; default: CPU count / workers."
    )
    memory_limit: str = Field(
        "auto",
        pattern=r"^(auto|\d+(\.\d+)?\s*(B|kB|KiB|MB|MiB|GB|GiB|TB|TiB))$",
        description="Memory per local worker (e.g. 4GiB); auto: the machine's memory / workers.",
    )

    @property
    def effective_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def worker_ports(self) -> list[int]:
        return [self.worker_port + i for i in range(self.workers)]


def default_pools() -> list[PoolSpec]:
    return [PoolSpec(name="default")]


class FlowyardConfig(BaseSettings):
    """All of Flowyard's settings; the README's configuration reference is generated from them."""

    model_config = SettingsConfigDict(
        env_prefix="FLOWYARD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    home: Path = Field(description="Where config, secrets, data and logs live (FLOWYARD_HOME).")
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    object_store: ObjectStoreConfig = Field(default_factory=ObjectStoreConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    pools: list[PoolSpec] = Field(
        default_factory=default_pools,
        description="Work pools `flowyard apply` keeps in step ([[pools]] tables, see below).",
    )
    global_limits: list[GlobalLimitSpec] = Field(
        default_factory=list, description="Global concurrency limits ([[global_limits]])."
    )
    hygiene: HygieneConfig = Field(default_factory=HygieneConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)

    @model_validator(mode="after")
    def _consistent(self) -> FlowyardConfig:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pools: names must be unique, got {names}")
        if self.worker.enabled and self.worker.pool not in names:
            raise ValueError(f"worker.pool {self.worker.pool!r} is not one of pools {names}")
        ports = self.port_settings()
        seen: dict[int, str] = {}
        for setting, port in ports.items():
            if port in seen:
                raise ValueError(
                    f"{setting} and {seen[port]} are both {port}; give each its own port"
                )
            seen[port] = setting
        return self

    def port_settings(self) -> dict[str, int]:
        """Every port the platform binds on this machine, by the setting that moves it."""
        ports = {
            "proxy.https_port": self.proxy.https_port,
            "proxy.http_port": self.proxy.http_port,
            "proxy.s3_https_port": self.proxy.s3_https_port,
            "proxy.admin_port": self.proxy.admin_port,
            "postgres.port": self.postgres.port,
            "redis.port": self.redis.port,
            "prefect.port": self.prefect.port,
        }
        if self.object_store.kind == "seaweedfs":
            ports.update(self.object_store.port_settings())
        if self.mlflow.enabled:
            ports["mlflow.port"] = self.mlflow.port
        if self.dask.enabled:
            ports["dask.https_port"] = self.dask.https_port
            ports["dask.scheduler_port"] = self.dask.scheduler_port
            for i, port in enumerate(self.dask.worker_ports()):
                ports[f"dask.worker_port + {i}"] = port
        return ports

    @property
    def pool(self) -> PoolSpec:
        return next(p for p in self.pools if p.name == self.worker.pool)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; the file beats defaults.
        toml_file = TOML_FILE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def to_toml_dict(self) -> dict[str, Any]:
        """What `flowyard init` writes: everything but `home`, which is where the file is."""
        return self.model_dump(mode="json", exclude={"home"}, exclude_none=True)


# pydantic-settings builds its sources from the class, not the call, so the file to read
# travels in a context variable that `flowyard.config.load.load_config` sets.
TOML_FILE: ContextVar[Path | None] = ContextVar("flowyard_toml_file", default=None)
