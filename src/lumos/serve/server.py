"""Binding and running the ``lumos serve`` app: loopback by default, a server thread for tests."""
from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from typing import Any, Callable

__all__ = ["check_host", "is_loopback", "run_in_thread", "serve_forever", "REMOTE_WARNING"]

REMOTE_WARNING = ("lumos serve: WARNING: listening on {host}, reachable from other machines. The app has no "
                  "login; anyone who can reach this port can run your models and upload files.")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not isinstance(host, str) or not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere


def check_host(host: str, allow_remote: bool = False, warn: Callable[[str], Any] | None = None) -> str:
    """``host`` when it may be bound: a loopback address, or any address with ``allow_remote``.

    Raises
    ------
    ValueError
        A non-loopback host (``0.0.0.0``, a LAN address, a host name) without ``allow_remote``.
    """
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string; got {host!r}")
    if is_loopback(host):
        return host
    if not allow_remote:
        raise ValueError(f"host {host!r} is not a loopback address: lumos serve binds to 127.0.0.1 unless "
                         "--allow-remote (allow_remote=True) is given, because the app has no login")
    (warn or (lambda m: print(m, file=sys.stderr)))(REMOTE_WARNING.format(host=host))
    return host


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def _config(app, log_level: str):
    import uvicorn

    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2,
                          limit_concurrency=64, access_log=False)


def run_in_thread(app, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False,
                  timeout: float = 10.0, log_level: str = "warning") -> tuple[str, Callable[[], None]]:
    """Serve ``app`` with uvicorn in a background thread; returns ``(url, stop)``.

    ``port=0`` picks a free port. ``stop()`` asks the server to exit and waits for it (bounded:
    about ``timeout`` seconds at most); it may be called more than once.
    """
    import uvicorn

    check_host(host, allow_remote)
    sock = _socket(host, port)
    server = uvicorn.Server(_config(app, log_level))
    server.install_signal_handlers = lambda: None  # not the main thread  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lumos-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("lumos serve: the server did not start")
        time.sleep(0.02)
    url = _url(sock)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        try:
            sock.close()
        except OSError:
            pass

    return url, stop


def serve_forever(app, host: str = "127.0.0.1", port: int = 8000, *, allow_remote: bool = False,
                  log_level: str = "info", warn: Callable[[str], Any] | None = None,
                  announce: Callable[[str], Any] | None = None) -> None:
    """Serve ``app`` in this thread until Ctrl-C (what ``lumos serve`` runs); ``announce(url)`` is
    called once the port is bound (``port=0`` picks a free one)."""
    import uvicorn

    check_host(host, allow_remote, warn)
    sock = _socket(host, port)
    if announce is not None:
        announce(_url(sock))
    try:
        uvicorn.Server(_config(app, log_level)).run(sockets=[sock])
    finally:
        sock.close()


def _url(sock: socket.socket) -> str:
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return f"http://{shown}:{bound[1]}"
