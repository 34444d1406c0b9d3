"""Several serving processes on one port: `switchboard serve --workers N`.

The parent forks N children; each listens on the same host and port with SO_REUSEPORT, so
the kernel spreads new connections evenly between them (where SO_REUSEPORT is missing, the
children share one socket the parent bound). Every worker shares the embedded servers the
parent started and the spool directory (each process locks its own segments).
SIGTERM or SIGINT to the parent is passed to every child; each shuts down cleanly (events
flushed), and the parent returns when all have exited, then stops the embedded servers.
A child that dies is not replaced: the parent stops the others and exits non-zero, so the
supervisor (systemd, Kubernetes) restarts the whole set.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Callable

import structlog

log = structlog.get_logger(__name__)


REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    """A socket on host:port that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if REUSE_PORT:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
    return sock


def run_workers(count: int, serve: Callable[[socket.socket], None], host: str,
                port: int) -> int:
    """Fork `count` workers running `serve(sock)`; return 0 when all ended cleanly."""
    shared = listening_socket(host, port, listen=not REUSE_PORT)  # a taken port fails here
    if REUSE_PORT:
        shared.close()
    children: list[int] = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                serve(listening_socket(host, port) if REUSE_PORT else shared)
            except BaseException:  # noqa: BLE001 (the worker's last word, then exit)
                log.exception("workers.crashed")
                code = 1
            os._exit(code)
        children.append(pid)
    if not REUSE_PORT:
        shared.close()
    log.info("workers.started", workers=children, host=host, port=port)
    return _wait(children)


def _wait(children: list[int]) -> int:
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        alive = set(children)
        while alive:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            alive.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0 and not stopping:
                failed = True
                log.error("workers.died", pid=pid, status=os.waitstatus_to_exitcode(status))
                stopping = True
                _signal_all(list(alive), signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("workers.stopped")
    return 1 if failed else 0


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
