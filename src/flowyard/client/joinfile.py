"""The worker join file: a client profile on paper, for a worker on another machine.

It holds what that worker needs and nothing else: the public URLs, the CA certificate, the
worker's own API login (role `worker`, minted by `flowyard worker join-file`, revoked by
`flowyard worker remove`: docs/access.md), its own S3 keys (role `worker`: the flows' scoped
actions) and MLflow login (EDIT on every experiment), all revoked together; the pool. It is
written 0600; anyone holding it can run flows on the platform. A joined worker's environment is
`client_env` of the profile the file describes, exactly as the server's own worker gets
`client_env` of its worker profile (`ClientProfile.for_workers`).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from flowyard.client.profile import (
    DASK_CA_CERT,
    DASK_CLIENT_CERT,
    DASK_CLIENT_KEY,
    ClientProfile,
    DaskLogin,
    MlflowLogin,
    dask_address,
)
from flowyard.errors import FlowyardError
from flowyard.files import write_private

HEADER = b"# Flowyard worker join file: grants access to the platform. Keep it 0600.\n"


@dataclass
class JoinInfo:
    url: str
    s3_url: str
    pool: str
    auth_string: str
    s3_access_key: str
    s3_secret_key: str
    region: str
    code_bucket: str
    ca_cert: str  # PEM; empty with a public (ACME) certificate
    # Added after the first release: files written before carry none of these, and a worker
    # joined with such a file simply gets no MLflow settings (copy a fresh file to fix).
    results_bucket: str = ""
    ca_signs_s3: bool = True
    mlflow_uri: str = ""
    mlflow_user: str = ""
    mlflow_password: str = ""
    # The platform's Dask cluster (dask.enabled): its proxy address, the client certificate
    # and key a Dask client or joined Dask worker presents, and the Dask CA (PEM).
    dask_address: str = ""
    dask_cert: str = ""
    dask_key: str = ""
    dask_ca: str = ""

    @classmethod
    def from_profile(cls, profile: ClientProfile, pool: str) -> JoinInfo:
        dask = profile.dask
        return cls(
            url=profile.url,
            s3_url=profile.s3_url,
            pool=pool,
            auth_string=profile.auth_string,
            s3_access_key=profile.s3_access_key,
            s3_secret_key=profile.s3_secret_key,
            region=profile.region,
            code_bucket=profile.code_bucket,
            ca_cert=profile.ca_file.read_text() if profile.ca_file else "",
            results_bucket=profile.results_bucket,
            ca_signs_s3=profile.ca_signs_s3,
            mlflow_uri=profile.mlflow.uri if profile.mlflow else "",
            mlflow_user=profile.mlflow.user if profile.mlflow else "",
            mlflow_password=profile.mlflow.password if profile.mlflow else "",
            dask_address=dask.address if dask else "",
            dask_cert=dask.cert_file.read_text() if dask else "",
            dask_key=dask.key_file.read_text() if dask else "",
            dask_ca=dask.cluster_ca_file.read_text() if dask and dask.cluster_ca_file else "",
        )

    def profile(self, home: Path, url: str | None = None) -> ClientProfile:
        """The profile on the joining machine: the CA written under `home`, and `url` when
        the worker reaches the platform by another name than the file's."""
        ca_file = None
        if self.ca_cert:
            ca_file = home / "ca.crt"
            write_private(ca_file, self.ca_cert)
        base = (url or self.url).rstrip("/")
        mlflow = None
        if self.mlflow_uri:
            # The tracking URI follows the URL the worker uses, as the API's does.
            uri = base + self.mlflow_uri.removeprefix(self.url)
            mlflow = MlflowLogin(uri=uri, user=self.mlflow_user, password=self.mlflow_password)
        return ClientProfile(
            dask=self._dask(home, base, ca_file),
            url=base,
            s3_url=self.s3_url,
            auth_string=self.auth_string,
            s3_access_key=self.s3_access_key,
            s3_secret_key=self.s3_secret_key,
            region=self.region,
            code_bucket=self.code_bucket,
            results_bucket=self.results_bucket,
            ca_file=ca_file,
            ca_signs_s3=bool(ca_file) and self.ca_signs_s3,
            mlflow=mlflow,
        )

    def _dask(self, home: Path, base: str, platform_ca: Path | None) -> DaskLogin | None:
        """The Dask credential on the joining machine, owner-only; its CA file verifies the
        proxy (platform CA or public roots) and the Dask CA's peers (a joined Dask worker is
        called by the scheduler and by other workers)."""
        if not (self.dask_address and self.dask_cert and self.dask_key):
            return None
        folder = home / "dask"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        write_private(folder / DASK_CLIENT_CERT, self.dask_cert)
        write_private(folder / DASK_CLIENT_KEY, self.dask_key)
        if platform_ca is not None:
            roots = platform_ca.read_text()
        else:
            import certifi

            roots = Path(certifi.where()).read_text()
        write_private(folder / DASK_CA_CERT, roots.rstrip() + "\n" + self.dask_ca)
        # The host follows the URL the worker uses, as the API's does; the port is the file's.
        port = urlsplit(self.dask_address).port
        host = urlsplit(base).hostname or ""
        url_host = f"[{host}]" if ":" in host else host
        return DaskLogin(
            address=dask_address(url_host, port or 0),
            cert_file=folder / DASK_CLIENT_CERT,
            key_file=folder / DASK_CLIENT_KEY,
            ca_file=folder / DASK_CA_CERT,
        )

    def write(self, path: Path) -> None:
        write_private(path, HEADER + tomli_w.dumps(asdict(self)).encode())

    @classmethod
    def read(cls, path: Path) -> JoinInfo:
        try:
            return cls(**tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise FlowyardError(
                f"No join file at {path}.",
                fix="On the server run `flowyard worker join-file --out FILE` and copy FILE here.",
            ) from None
        except (tomllib.TOMLDecodeError, TypeError) as exc:
            raise FlowyardError(
                f"{path} is not a Flowyard join file: {exc}", fix="Copy it again from the server."
            ) from exc
