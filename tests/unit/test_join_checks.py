"""A joining worker's connection checks name the cause of a failed connection: a server
certificate the join file's CA does not sign, a refused client certificate, or no route.
Against a real TLS server on loopback (a thread here), certificates from `flowyard.pki`."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from flowyard import pki
from flowyard.errors import FlowyardError
from flowyard.platform import join

FIXES = {"ca_fix": "CA-FIX", "reach_fix": "REACH-FIX", "cert_fix": "CERT-FIX"}


def _write_pair(tmp: Path, stem: str, cert: x509.Certificate, key: pki.Key) -> tuple[str, str]:
    crt, pem = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    crt.write_bytes(pki.cert_pem(cert))
    pem.write_bytes(pki.key_pem(key))
    return str(crt), str(pem)


@contextlib.contextmanager
def tls_server(tmp: Path, *, client_ca: str | None) -> Iterator[tuple[int, str]]:
    """A TLS server on 127.0.0.1 that answers one HTTP 200 per connection: its port and
    its CA's file. With `client_ca`, it requires a client certificate that CA signs."""
    ca, ca_key = pki.new_ca("test server CA")
    ca_file, _ = _write_pair(tmp, "server-ca", ca, ca_key)
    cert, key = pki.issue(ca, ca_key, "server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    crt, pem = _write_pair(tmp, "server", cert, key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, pem)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(4096)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], ca_file
    finally:
        stop.set()
        thread.join()
        listener.close()


def _client(cafile: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if cert:
        context.load_cert_chain(*cert)
    return context


def test_a_server_certificate_the_join_files_ca_does_not_sign(tmp_path: Path) -> None:
    other, other_key = pki.new_ca("another CA")
    other_file, _ = _write_pair(tmp_path, "other-ca", other, other_key)
    with tls_server(tmp_path, client_ca=None) as (port, server_ca):
        url = f"https://127.0.0.1:{port}/health"
        # The server's own CA: the check passes, so the failure below is the CA's doing.
        good = _client(server_ca)
        assert join._get(url, good, "the server", **FIXES).status_code == 200
        with pytest.raises(FlowyardError) as err:
            join._get(url, _client(other_file), "the server", **FIXES)
    assert "The server presented a certificate the join file's CA does not sign" in str(err.value)
    assert err.value.fix == "CA-FIX"


def test_a_refused_client_certificate(tmp_path: Path) -> None:
    client_ca, client_ca_key = pki.new_ca("client CA")
    client_ca_file, _ = _write_pair(tmp_path, "client-ca", client_ca, client_ca_key)
    mine = _write_pair(tmp_path, "mine", *pki.issue(client_ca, client_ca_key, "mine", []))
    stranger_ca, stranger_key = pki.new_ca("stranger CA")
    stranger = _write_pair(tmp_path, "stranger", *pki.issue(stranger_ca, stranger_key, "x", []))
    with tls_server(tmp_path, client_ca=client_ca_file) as (port, server_ca):
        url = f"https://127.0.0.1:{port}/health"
        assert join._get(url, _client(server_ca, mine), "the port", **FIXES).is_success
        with pytest.raises(FlowyardError) as err:
            join._get(url, _client(server_ca, stranger), "the port", **FIXES)
    assert "The port refused the join file's client certificate" in str(err.value)
    assert err.value.fix == "CERT-FIX"


def test_no_route(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    # Nothing listens there now.
    with pytest.raises(FlowyardError) as err:
        join._get(f"https://127.0.0.1:{port}/", True, "the platform", **FIXES)
    assert str(err.value).startswith("Cannot reach the platform:")
    assert err.value.fix == "REACH-FIX"
