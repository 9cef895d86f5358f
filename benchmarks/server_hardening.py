"""How the router's HTTP server candidates treat hostile clients: Sluice's own `HttpServer` (defaults), uvicorn 0.54
and granian 2.8.7, each serving the same router app with its hardening options on (as in router_overhead.py).

    .venv/bin/python benchmarks/server_hardening.py [--servers sluice,uvicorn,granian] [--patience 12]

Per server (its own process on 127.0.0.1), with raw sockets: how long a slowloris connection (one header byte every
0.5 s) stays open, how long an idle connection stays open, what a 1 MB header gets, and how much the server's RSS
grows while one client pipelines 200,000 requests and never reads the answers. "open" means still open when the
patience ran out. Results: benchmarks/results/server_hardening.json (docs/serving/http-server.md shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import contextlib

from tests.support import free_port, wait_for

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "server_hardening.json"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


def _start(kind: str, port: int, config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SLUICE_ADMIN_TOKEN": "bench"}
    if kind == "sluice":
        cmd = ["-m", "sluice.serving.host_standalone", "--config", str(config), "--port", str(port)]
    else:
        cmd = [str(HERE / "router_overhead.py"), "--alt-router", kind, str(port), str(config)]
    return subprocess.Popen([sys.executable, *cmd], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _closed(sock: socket.socket) -> bool:
    """True once the server closed (EOF or reset); answers already sent are read and dropped."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def slowloris(port: int, patience: float) -> str:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    while time.monotonic() - t0 < patience:
        try:
            sock.sendall(b"X")
        except OSError:
            break
        if _closed(sock):
            break
        time.sleep(0.5)
    else:
        sock.close()
        return "open"
    sock.close()
    return f"closed after {time.monotonic() - t0:.1f} s"


def idle(port: int, patience: float) -> str:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(LIVE)
    t0 = time.monotonic()
    while time.monotonic() - t0 < patience:
        if _closed(sock):
            sock.close()
            return f"closed after {time.monotonic() - t0:.1f} s"
        time.sleep(0.2)
    sock.close()
    return "open"


def huge_header(port: int) -> str:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
    answer = b""
    with contextlib.suppress(OSError):
        answer = sock.recv(200)
    sock.close()
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer (connection closed)"
    return f"{status} in {time.monotonic() - t0:.2f} s"


def unread_pipeline(port: int, pid: int) -> tuple[str, float]:
    before = _rss_mb(pid)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(3.0)
    sent = 0
    try:
        while sent < 200_000:
            sock.sendall(LIVE * 500)
            sent += 500
    except OSError:
        pass
    time.sleep(1.0)
    grown = _rss_mb(pid) - before
    sock.close()
    return f"{sent} of 200000 requests taken", round(grown, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="sluice,uvicorn,granian")
    parser.add_argument("--patience", type=float, default=12.0, help="seconds to wait before calling a socket open")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sluice-hardening-") as tmp:
        config = Path(tmp) / "router.json"
        dead = f"http://127.0.0.1:{free_port()}"  # no backend: every check here stays in the HTTP layer
        config.write_text(
            json.dumps(
                {
                    "model_name": "m",
                    "variants": [
                        {"name": "stable", "version": "1", "uri": "file://m.onnx", "weight": 100, "endpoint": dead}
                    ],
                }
            )
        )
        for kind in [k for k in args.servers.split(",") if k]:
            port = free_port()
            proc = _start(kind, port, config)
            try:
                wait_for(f"{kind} to listen", lambda p=port: _listening(p), 30.0)
                pipelined, grown = unread_pipeline(port, proc.pid)
                row = {
                    "server": kind,
                    "slowloris": slowloris(port, args.patience),
                    "idle_keep_alive": idle(port, args.patience),
                    "header_1mb": huge_header(port),
                    "unread_pipeline": pipelined,
                    "unread_pipeline_rss_growth_mb": grown,
                }
                print(row, flush=True)
                rows.append(row)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    result = {
        "benchmark": "server_hardening",
        "command": f"python benchmarks/server_hardening.py --servers {args.servers} --patience {args.patience:g}",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, shared VM",
        "summary": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
