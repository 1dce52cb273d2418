"""What the warm-up left open that every worker would inherit: sockets and threads.

The warm-up runs requests in the master. Whatever they leave open is forked into every worker:
a connection kept in a client's pool (an HTTP session, a cache or broker client, a database
driver cowprof does not know, :mod:`cowprof.db_connections` closes SQLAlchemy's) is then one
socket in many processes, whose protocol breaks as soon as two of them use it; a thread the
requests started (a client's background sender, an executor) is not forked at all, and what
waits on it in a worker waits forever. cowprof cannot know who owns either, so it does not close
them: :class:`Snapshot` lists what is new since it was taken, for the warm-up to report and log.

Not reported: listening sockets, and the sockets they accepted (the transport's own server);
loopback connections whose two ends are both in this process.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Snapshot"]


def _address(addr: Any) -> str:
    if not addr:
        return ""
    if isinstance(addr, str):
        return addr
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sockets() -> dict[int, Any]:
    """This process's sockets by file descriptor ({} where psutil cannot list them)."""
    import psutil

    try:
        return {c.fd: c for c in psutil.Process().net_connections("all") if c.fd != -1}
    except (psutil.Error, OSError):
        return {}


@dataclass(frozen=True)
class Snapshot:
    """The sockets and threads of this process at one moment."""

    sockets: dict[int, tuple[Any, Any]]
    threads: frozenset[int]

    @classmethod
    def take(cls) -> Snapshot:
        return cls({fd: (c.laddr, c.raddr) for fd, c in _sockets().items()},
                   frozenset(t.ident or 0 for t in threading.enumerate()))

    def new_since(self) -> list[str]:
        """One line for each socket and thread that exists now and did not when this was taken."""
        now = _sockets()
        listening = {c.laddr[1] for c in now.values()
                     if c.status == "LISTEN" and c.family != socket.AF_UNIX and c.laddr}
        ends = {(c.laddr, c.raddr) for c in now.values()}
        out = []
        for fd, c in sorted(now.items()):
            if self.sockets.get(fd) == (c.laddr, c.raddr) or c.status == "LISTEN":
                continue
            if c.family == socket.AF_UNIX:
                where = _address(c.laddr) or _address(c.raddr) or "unnamed"
                out.append(f"socket fd {fd} open (unix, {where}): every worker inherits it")
                continue
            if c.laddr and c.laddr[1] in listening:
                continue  # accepted by a server of this process
            if c.raddr and (c.raddr, c.laddr) in ends:
                continue  # both ends in this process
            kind = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            peer = _address(c.raddr) or "not connected"
            out.append(f"socket fd {fd} open ({kind} {_address(c.laddr)} -> {peer}): every worker inherits it")
        for thread in threading.enumerate():
            if thread.ident not in self.threads and thread.is_alive():
                out.append(f"thread {thread.name!r} running: no worker has it (threads are not forked)")
        return out
