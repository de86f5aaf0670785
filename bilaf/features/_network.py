"""A fast "is the internet reachable?" probe, so offline runs fail in seconds instead of hanging."""

from __future__ import annotations

import socket
import threading


def host_reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout_s`` (DNS included)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we can abandon.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(outcome and outcome[0])
