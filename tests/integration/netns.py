"""A second host for tests: a network namespace joined to this one by a veth pair.

The namespace's only way to the platform is the host end of the veth, where only Caddy
listens; every other platform service binds 127.0.0.1 of the host namespace.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RemoteHost:
    namespace: str
    host_ip: str  # the platform side of the link
    remote_ip: str
    remote_if: str  # the namespace's end of the veth: `ip link set ... down` cuts the link

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def join_worker(
        self, proxy_url: str, join: Path, workdir: Path, log: Path, *options: str
    ) -> subprocess.Popen[bytes]:
        """`flowyard worker join` on this host, as a user there would run it: a clean
        environment (nothing of the server's settings, only the join file), its own home
        under `workdir`, output in `log`."""
        home = workdir / "remote-home"
        home.mkdir(exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                [
                    *self.prefix(),
                    str(Path(sys.executable).parent / "flowyard"),
                    "worker",
                    "join",
                    proxy_url,
                    "--join-file",
                    str(join),
                    "--home",
                    str(home / "worker"),
                    *options,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=home,
            )

    def link(self, up: bool) -> None:
        """Cut (or restore) the second host's only link, as a pulled cable would: no RST,
        packets in flight are dropped and open connections stall."""
        _ip(
            "netns",
            "exec",
            self.namespace,
            "ip",
            "link",
            "set",
            self.remote_if,
            "up" if up else "down",
        )


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def remote_host() -> Iterator[RemoteHost | None]:
    """Yields None where namespaces cannot be made (no root, no iproute2)."""
    if shutil.which("ip") is None:
        yield None
        return
    tag = f"{random.randint(0, 0xFFFF):04x}"
    ns, host_if, ns_if = f"fy-{tag}", f"fyh-{tag}", f"fyn-{tag}"
    # A /30 in 10.231.0.0/16: only ever our own two ends.
    octet = random.randint(0, 63) * 4
    net = f"10.231.{random.randint(0, 255)}"
    host_ip, remote_ip = f"{net}.{octet + 1}", f"{net}.{octet + 2}"
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError:
        yield None
        return
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{remote_ip}/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield RemoteHost(namespace=ns, host_ip=host_ip, remote_ip=remote_ip, remote_if=ns_if)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def stop_joined_worker(worker: subprocess.Popen[bytes], grace: float = 30) -> None:
    """Stop a joined worker as its user would (SIGTERM to its process group, which holds
    its flow runs and Dask processes too), killing the group if it does not stop in time."""
    try:
        # The group outlives its leader while any of its processes runs.
        os.killpg(worker.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
