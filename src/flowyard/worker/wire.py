"""The worker <-> warm-interpreter protocol: length-prefixed JSON messages on a Unix socket.

One connection per request. For a fork the zygote answers `{"pid": ...}` at once and
`{"exit": <returncode>}` on the same connection when it reaps the child, so the worker
learns the exit status of a process that is not its own child (the forkserver design of
multiprocessing). Blocking helpers for the zygote (no event loop may exist before a fork),
asyncio helpers for the worker.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_HEADER = struct.Struct(">I")
# A request carries a whole environment; 16 MiB is far beyond any real one.
MAX_MESSAGE = 16 * 1024 * 1024


class ProtocolError(Exception):
    pass


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def _decode_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes is too large")
    return length


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise EOFError("connection closed")
        chunks += chunk
    return bytes(chunks)


def recv(sock: socket.socket) -> dict[str, Any]:
    length = _decode_length(_recv_exactly(sock, _HEADER.size))
    message = json.loads(_recv_exactly(sock, length))
    if not isinstance(message, dict):
        raise ProtocolError("message is not an object")
    return message


async def arecv(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Next message, or EOFError when the zygote closed the connection."""
    try:
        header = await reader.readexactly(_HEADER.size)
        body = await reader.readexactly(_decode_length(header))
    except asyncio.IncompleteReadError as exc:
        raise EOFError("connection closed") from exc
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ProtocolError("message is not an object")
    return message
