"""Hostile clients against the router's own HTTP server (issue 13 rows 2-6), with raw sockets on 127.0.0.1.

Each scenario is bounded in count and time and asserts three things: a well-behaved client keeps getting answers
within a bound while it runs, the server ends up holding no extra file descriptors or memory (this process's
/proc/self/fd count and RSS, with a margin: the server runs in a thread here), and no error path logged a
traceback. The server runs with short timeouts (1 s) and a 200-connection cap so the suite stays well under 60 s;
the defaults are in docs/serving/security.md.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from tests.serving.helpers import MODEL, OnnxBackend, config, row, serve, v2_body
from tests.support import wait_for

from sluice.serving.httpserver import ServerLimits
from sluice.serving.router import Router

LIMITS = ServerLimits(
    header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_timeout_s=1.0, max_connections=200, max_pipelined=16
)
URL = f"/v2/models/{MODEL}/infer"
GOOD_BODY = json.dumps(v2_body(row())).encode()
# Bounds that prove "keeps answering" (an attack that starved the server would exceed them many times over), not
# benchmarks: wide, so a shared 2-core VM at load ~10 does not flake (a good client normally answers in ~10 ms).
PROBE_BOUND_S = 5.0  # a good client's answer time while an attack runs
CUT_BOUND_S = 8.0  # a slow or endless sender is cut off within this (the header timeout is 1 s)
FD_MARGIN = 8
# RSS is compared with room for what the allocator keeps after a burst (four 2 MB bodies parsed into 1M-element
# lists at once); the giant-rows scenario also checks the Python heap itself across repeated rounds.
RSS_MARGIN = 128 * 1024 * 1024
LEAK_MARGIN = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def base(model_bytes: bytes) -> Iterator[str]:
    cfg = config(variants=[{"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100}])
    with serve(Router(cfg, {"stable": OnnxBackend(model_bytes, "v1")}), LIMITS) as url:
        yield url


def _addr(base: str) -> tuple[str, int]:
    host, port = base.rsplit("//", 1)[1].split(":")
    return host, int(port)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(base: str) -> tuple[int, float]:
    """One infer on a fresh connection: (status, seconds)."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=5) as client:
        status = client.post(URL, content=GOOD_BODY, headers={"content-type": "application/json"}).status_code
    return status, time.perf_counter() - t0


def assert_served(base: str, times: int = 3) -> None:
    for _ in range(times):
        status, seconds = probe(base)
        assert status == 200
        assert seconds < PROBE_BOUND_S, f"a good client waited {seconds:.2f} s"


def connect(base: str) -> socket.socket:
    sock = socket.create_connection(_addr(base), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket, timeout_s: float = 3.0) -> bytes:
    """Everything the server sends until it closes (or `timeout_s`); a reset reads as what came before it."""
    sock.settimeout(timeout_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(autouse=True)
def no_leaks(base: str, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """fds and RSS back near where they were, no traceback logged, the server still answering."""
    caplog.set_level(logging.INFO)
    assert_served(base, 1)  # warm: the connection machinery and metadata cache exist before measuring
    fds, rss = _fds(), _rss()
    yield
    wait_for("the server to close its side of every connection", lambda: _fds() <= fds + FD_MARGIN, 5.0)
    assert _rss() - rss < RSS_MARGIN, f"RSS grew by {(_rss() - rss) / 1e6:.0f} MB"
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) < 5  # never one per connection
    assert_served(base, 1)


def test_slowloris_is_cut_off_at_the_header_timeout(base: str) -> None:
    socks = [connect(base) for _ in range(30)]
    for s in socks:
        s.sendall(b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    cut: dict[int, float] = {}
    while len(cut) < len(socks) and time.monotonic() - t0 < CUT_BOUND_S:
        for i, s in enumerate(socks):
            if i not in cut:
                try:
                    s.sendall(b"X")  # one header byte at a time
                except OSError:
                    cut[i] = time.monotonic() - t0
        assert_served(base, 1)
        time.sleep(0.2)
    answers = [read_answer(s, 1.0) for s in socks]
    for s in socks:
        s.close()
    assert all(status_of(a) in (408, 0) for a in answers), answers[:3]
    assert sum(status_of(a) == 408 for a in answers) >= 25
    assert b"request headers not received within 1 s" in answers[0]
    assert time.monotonic() - t0 < CUT_BOUND_S


def test_idle_flood_hits_the_cap_with_a_clear_answer_then_drains(base: str) -> None:
    socks = [connect(base) for _ in range(260)]
    refused = [read_answer(s, 0.05) for s in socks[200:]]
    # Past the cap: 503 and a close, at once (the probe's own connection may take one of the 200 slots).
    assert sum(status_of(a) == 503 for a in refused) >= 55
    assert b"too many connections" in next(a for a in refused if a)
    status, seconds = probe(base)
    assert status == 503  # the next client hears why, instead of timing out
    assert seconds < PROBE_BOUND_S
    # Idle connections are closed at the header timeout; new clients are served again.
    wait_for("a good client to be served again", lambda: probe(base)[0] == 200, CUT_BOUND_S, 0.2)
    assert all(read_answer(s, 0.5) == b"" for s in socks[:200])
    for s in socks:
        s.close()
    # The server's own 503s are counted like every other 5xx (empty variant/version: no model was chosen).
    metrics = httpx.get(f"{base}/metrics", timeout=5).text
    [line] = [x for x in metrics.splitlines() if x.startswith("sluice_requests_total{") and 'code="503"' in x]
    assert 'variant=""' in line
    assert float(line.rsplit(" ", 1)[1]) >= 55


def test_huge_url_and_headers_are_refused_while_parsing(base: str) -> None:
    cases = [
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
        (b"GET /v2/health/live HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
    ]
    for raw, expected in cases:
        s = connect(base)
        s.sendall(raw)
        assert status_of(read_answer(s)) == expected
        s.close()
    # A header of (up to) 64 MB, streamed: refused after the first ~16 KB, in linear time; the client cannot finish.
    s = connect(base)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
    t0, sent, chunk = time.monotonic(), 0, b"a" * 65536
    s.settimeout(2.0)
    try:
        while sent < 64 * 1024 * 1024:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    answer = read_answer(s, 1.0)
    s.close()
    assert time.monotonic() - t0 < CUT_BOUND_S
    assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes of one header"
    assert status_of(answer) in (431, 0)  # 0: the reset raced the answer
    assert_served(base)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin/config HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n"
        b"GET /admin/config HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /v2/health/live\r\n\r\n",  # no HTTP version: never served
    ],
    ids=["cl-and-te", "double-cl", "bad-chunk", "cl-list", "obs-fold", "no-version"],
)
def test_smuggling_and_malformed_framing_get_one_refusal_and_a_close(base: str, raw: bytes) -> None:
    s = connect(base)
    s.sendall(raw)
    answer = read_answer(s)
    s.close()
    assert status_of(answer) in (400, 505), answer[:200]
    assert answer.count(b"content-length:") == 1  # the hidden second request is never answered
    assert b"connection: close" in answer
    assert_served(base, 1)


def test_pipelining_flood_does_not_starve_others_and_unread_answers_stop_reading(base: str) -> None:
    flood = connect(base)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that does not read its answers
    one = b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(GOOD_BODY) + GOOD_BODY
    flood.settimeout(0.5)
    sent = 0
    done = threading.Event()

    def pump() -> None:
        nonlocal sent
        try:
            while sent < 100_000 and not done.is_set():
                flood.sendall(one * 500)
                sent += 500
        except OSError:
            pass  # the server stopped reading: send blocks until the timeout

    rss = _rss()
    sender = threading.Thread(target=pump)
    sender.start()
    time.sleep(1.0)  # the flood is in before the good client asks
    try:
        latencies = []
        for _ in range(15):
            status, seconds = probe(base)
            assert status == 200
            latencies.append(seconds)
        assert max(latencies) < PROBE_BOUND_S * 2, latencies
        assert sorted(latencies)[len(latencies) // 2] < PROBE_BOUND_S
        # Queued requests and unsent answers are bounded: no per-request growth (~10 KB each without backpressure).
        grown = _rss() - rss
        assert grown < 32 * 1024 * 1024, f"RSS grew {grown / 1e6:.0f} MB under {sent} pipelined requests"
    finally:
        done.set()
        sender.join(5)
    # Answers the client never reads stop the server reading its requests: far fewer than sent were taken.
    assert sent < 100_000  # ~30 MB: more than the kernel buffers hold, so the server must have stopped reading
    flood.close()


def test_giant_row_counts_are_413_before_any_tensor_is_built(base: str) -> None:
    rows = 1_000_000
    body = b'{"inputs":[{"name":"X","shape":[%d,1],"datatype":"FP32","data":[' % rows
    body += b",".join([b"0"] * rows) + b"]}]}"
    assert len(body) < 8 * 1024 * 1024  # under the body limit: only the row limit stands in the way

    def one() -> tuple[int, float]:
        t0 = time.perf_counter()
        with httpx.Client(base_url=base, timeout=10) as c:
            r = c.post(URL, content=body, headers={"content-type": "application/json"})
        return r.status_code, time.perf_counter() - t0

    with ThreadPoolExecutor(4) as pool:
        for round_ in range(3):  # round 1 warms up; rounds 2-3 are traced: what they leave alive is a leak
            if round_ == 1:
                tracemalloc.start(8)
            futures = [pool.submit(one) for _ in range(4)]
            assert_served(base, 1)
            results = [f.result() for f in futures]
            assert [code for code, _ in results] == [413] * 4
            # A bound on the answer, not a benchmark: a 413 costs a parse of the header, never a tensor.
            assert max(seconds for _, seconds in results) < 8.0

        def kept() -> int:
            """Bytes still held that were allocated in Sluice's serving code (other threads of this test process,
            left by earlier tests, allocate too; they are no leak of this server)."""
            gc.collect()
            ours = tracemalloc.Filter(True, "*/sluice/serving/*", all_frames=True)
            snapshot = tracemalloc.take_snapshot().filter_traces([ours])
            return sum(stat.size for stat in snapshot.statistics("filename"))

        try:  # the server drops a closed connection's buffers a moment after the client saw its answer
            wait_for("the Python heap to shed the traced rounds", lambda: kept() < LEAK_MARGIN, 3.0, 0.1)
        finally:
            tracemalloc.stop()
    # RSS is no measure here: glibc keeps the 8 MB list blocks of each parse in its arenas (it grows a few MB a
    # round and plateaus), while the Python heap shows what really stays.


def test_high_dimensional_shapes_and_deep_nesting_are_400(base: str) -> None:
    with httpx.Client(base_url=base, timeout=5) as c:
        for shape in ([1] * 33, [1] * 1000):
            body = {"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": [1.0]}]}
            assert c.post(URL, json=body).status_code == 400
        deep: list[object] = [1.0]
        for _ in range(40):
            deep = [deep]
        body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": deep}]}
        assert c.post(URL, json=body).status_code == 400


def test_abrupt_disconnects_leave_nothing_behind(base: str) -> None:
    for i in range(120):
        s = connect(base)
        if i % 3 == 0:  # half a body, then a reset
            s.sendall(b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n" + b"{" * 100)
        elif i % 3 == 1:  # a whole request, gone before the answer
            s.sendall(b"POST " + URL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(GOOD_BODY))
            s.sendall(GOOD_BODY)
        else:  # half a request line
            s.sendall(b"POST /v2/mod")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.close()
    assert_served(base)


def test_an_h2c_upgrade_offer_is_answered_over_http11_then_closed(base: str) -> None:
    """`curl --http2` offers h2c: the request runs and gets its answer (never a 400), then the connection closes."""
    offer = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
    for raw in (
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + offer + b"\r\n",
        b"POST "
        + URL.encode()
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n" % len(GOOD_BODY)
        + offer
        + b"\r\n"
        + GOOD_BODY,
    ):
        s = connect(base)
        s.sendall(raw)
        answer = read_answer(s)
        s.close()
        assert status_of(answer) == 200, answer[:300]
        assert b"connection: close" in answer
    assert b'"outputs"' in answer  # the POST's body was read after the offer
    s = connect(base)
    s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert status_of(read_answer(s)) == 400
    s.close()
