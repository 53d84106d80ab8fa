"""Checks of a slide run's surroundings made before any work: the dask scheduler address.

:func:`probe_scheduler` opens one TCP connection to a ``tcp://host:port`` address and reads
the greeting a dask scheduler sends first (a small framed msgpack message naming its
``compression`` and ``pickle-protocol``), within ``timeout`` seconds. Nothing listening, a
service that stays silent (a web server), or one that answers something else (ssh, a
database) each give :class:`~napari_biomedparse.errors.SchedulerUnavailableError` in a
few seconds, instead of ``distributed.Client`` waiting or misreading the answer as a frame
length ("Unable to allocate 3.07 EiB"). Other protocols (``tls://``, ``inproc://``...)
are left to the client.
"""

from __future__ import annotations

import socket
import struct

from napari_biomedparse.errors import SchedulerUnavailableError

__all__ = ["probe_scheduler"]

_HELP = (
    "Start one there (`dask scheduler`, then `dask worker ADDRESS` on each machine; see "
    "docs/distributed.md), check the address and port, or leave the scheduler out to run "
    "in this process."
)


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            break
        buf += part
    return buf


def probe_scheduler(address: str, timeout: float = 5.0) -> None:
    """Raise SchedulerUnavailableError unless a dask scheduler answers at ``address``."""
    addr = str(address).strip()
    proto, _, rest = addr.rpartition("://")
    if proto not in ("", "tcp"):
        return
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise SchedulerUnavailableError(
            f"{address!r} is not a scheduler address: give tcp://HOST:PORT (e.g. "
            "tcp://10.0.0.5:8786)"
        )
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        raise SchedulerUnavailableError(
            f"no dask scheduler answers at {address!r} ({exc}). " + _HELP
        ) from None
    try:
        sock.settimeout(timeout)
        try:
            head = _read(sock, 8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            body = _read(sock, n) if 8 < n < 65536 else b""
        except (OSError, TimeoutError):
            head, body = b"", b""
    finally:
        sock.close()
    if b"pickle-protocol" not in body and b"compression" not in body:
        what = "sent nothing" if not head else f"answered {head[:8]!r}"
        raise SchedulerUnavailableError(
            f"something listens at {address!r} but it is not a dask scheduler (it {what} "
            f"within {timeout:g} s). " + _HELP
        )
