"""The one way serving code picks a port for a server it starts as a separate process (tritonserver, Ray Serve)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now; the caller's server binds it next (a small race, retried there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
