"""The wall-clock deadline of a fetch.

Socket timeouts bound each connect and each read, not their sum: a server that sends a
byte a second never trips a 20 s read timeout. So each fetch runs in a `Scope` with an
absolute deadline; the pinned connection pools report every connection they hand to the
fetch's thread (`on_checkout`), and one watchdog thread per process shuts down the
sockets of scopes that pass their deadline. The blocked read or TLS handshake then fails
at once, and the fetch ends with reason `deadline`.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError


def _shutdown_socket(conn) -> None:
    """Shut down a socket, or the socket a connection holds now (None between requests)."""
    sock = conn if isinstance(conn, socket.socket) else getattr(conn, "sock", None)
    if sock is None:
        return
    try:  # the plain socket's shutdown, also for an SSLSocket (it leaves the TLS state alone)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def response_socket(response) -> socket.socket | None:
    """The socket a streamed response reads its body from.

    http.client hands a `Connection: close` socket over to the response (the connection's
    `sock` becomes None), so the body phase needs the socket itself:
    requests Response -> urllib3 HTTPResponse -> http.client HTTPResponse -> buffered
    reader -> SocketIO -> socket (an SSLSocket for https).
    """
    fp = getattr(getattr(response, "raw", None), "_fp", None)
    raw = getattr(getattr(fp, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


class Scope:
    """One fetch's deadline and the connections (or sockets) it is using right now."""

    __slots__ = ("deadline", "external", "conns", "expired", "finished", "lock")

    def __init__(self, deadline: float, external: float | None):
        self.deadline = deadline
        self.external = external  # a deadline the caller imposed, inherited by robots.txt
        self.conns: list = []
        self.expired = False
        self.finished = False
        self.lock = threading.Lock()

    def attach(self, conn) -> None:
        with self.lock:
            if self.finished:
                return
            self.conns.append(conn)
            if self.expired:
                _shutdown_socket(conn)

    def release(self) -> None:
        """Forget the connections: they go back to the pool and may serve other threads."""
        with self.lock:
            self.conns.clear()

    def expire(self) -> None:
        with self.lock:
            if self.finished:
                return
            self.expired = True
            for conn in self.conns:
                _shutdown_socket(conn)

    def finish(self) -> None:
        with self.lock:
            self.finished = True
            self.conns.clear()


class Watchdog:
    """A daemon thread that expires scopes at their deadline (and again every 50 ms while
    they run on, since a connection may not have had its socket yet at the first call)."""

    RECHECK = 0.05

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Scope]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, scope: Scope) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fetch-deadline-watchdog", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (scope.deadline, next(self._seq), scope))
            if self._heap[0][2] is scope:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].finished:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                _, _, scope = heapq.heappop(self._heap)
            scope.expire()
            if not scope.finished:
                with self._cond:
                    again = time.monotonic() + self.RECHECK
                    heapq.heappush(self._heap, (again, next(self._seq), scope))


WATCHDOG = Watchdog()


def _new_watchdog_after_fork() -> None:
    global WATCHDOG
    WATCHDOG = Watchdog()  # the parent's thread and lock do not survive a fork


os.register_at_fork(after_in_child=_new_watchdog_after_fork)


def connect_failed(err: BaseException) -> bool:
    """True when a requests error means the TCP connection was never made."""
    if isinstance(err, requests.exceptions.SSLError):
        return False
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(err, requests.ConnectionError) and err.args:
        reason = getattr(err.args[0], "reason", err.args[0])
        return isinstance(reason, NewConnectionError | ConnectTimeoutError)
    return False
