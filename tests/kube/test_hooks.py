"""The emulator's audit log and write hooks: what the RBAC audit and the kill-point restart tests stand on."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import httpx
from tests.kube.helpers import unique
from tests.support.emulator import AuditEntry, EmulatorThread

UA = "hooks-test/1"


def _client(base: str, agent: str = UA) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"User-Agent": agent}, timeout=30)


def _namespace(base: str) -> str:
    name = unique("hooks")
    with _client(base, "hooks-setup/1") as http:
        assert http.post("/api/v1/namespaces", json={"metadata": {"name": name}}).status_code == 201
    return name


def test_audit_log_names_each_request_with_its_rbac_verb(kube_emulator: EmulatorThread) -> None:
    base = kube_emulator.url
    ns = _namespace(base)
    agent = unique("auditor") + "/1"
    cms = f"/api/v1/namespaces/{ns}/configmaps"
    deployments = f"/apis/apps/v1/namespaces/{ns}/deployments"
    with _client(base, agent) as http:
        assert http.post(cms, json={"metadata": {"name": "a"}, "data": {"k": "1"}}).status_code == 201
        assert http.post(cms, json={"metadata": {"name": "a"}}).status_code == 409  # audited too, with its code
        assert http.get(cms).status_code == 200
        assert http.get(f"{cms}/a").status_code == 200
        merge = {"Content-Type": "application/merge-patch+json"}
        assert http.patch(f"{cms}/a", content=json.dumps({"data": {"k": "2"}}), headers=merge).status_code == 200
        assert http.put(f"{cms}/a", json={"metadata": {"name": "a"}, "data": {"k": "3"}}).status_code == 200
        assert http.get(cms, params={"watch": "true", "timeoutSeconds": "1"}).status_code == 200
        body = {"metadata": {"name": "d"}, "spec": {"selector": {}, "template": {}}}
        assert http.post(deployments, json=body).status_code == 201
        status = {"status": {"readyReplicas": 1}}
        assert http.patch(f"{deployments}/d/status", content=json.dumps(status), headers=merge).status_code == 200
        assert http.delete(f"{cms}/a").status_code == 200
        assert http.delete(cms).status_code == 200
        assert http.get("/apis/nothing.example/v1/things").status_code == 404  # unknown kinds are audited as asked

    seen: list[AuditEntry] = kube_emulator.call(lambda: kube_emulator.emulator.audited(agent))
    got = [(e.verb, e.group, e.resource, e.subresource, e.namespace, e.name, e.code) for e in seen]
    assert got == [
        ("create", "", "configmaps", "", ns, "a", 201),  # a create's name comes from the created object
        ("create", "", "configmaps", "", ns, "", 409),
        ("list", "", "configmaps", "", ns, "", 200),
        ("get", "", "configmaps", "", ns, "a", 200),
        ("patch", "", "configmaps", "", ns, "a", 200),
        ("update", "", "configmaps", "", ns, "a", 200),
        ("watch", "", "configmaps", "", ns, "", 200),
        ("create", "apps", "deployments", "", ns, "d", 201),
        ("patch", "apps", "deployments", "status", ns, "d", 200),
        ("delete", "", "configmaps", "", ns, "a", 200),
        ("deletecollection", "", "configmaps", "", ns, "", 200),
        ("list", "nothing.example", "things", "", "", "", 404),
    ]
    assert all(e.user_agent == agent for e in seen)
    # Discovery is not a resource request (every authenticated user may read it): not in the log.
    with _client(base, agent) as http:
        assert http.get("/apis").status_code == 200
    assert len(kube_emulator.call(lambda: kube_emulator.emulator.audited(agent))) == len(got)


def test_write_hook_runs_after_the_nth_write_of_one_client_only(kube_emulator: EmulatorThread) -> None:
    base = kube_emulator.url
    ns = _namespace(base)
    agent = unique("counted") + "/2"
    fired: list[tuple[str, bool]] = []
    emulator = kube_emulator.emulator

    def action(entry: AuditEntry) -> None:
        # Runs in the emulator's loop: the write that triggered it is already in the store.
        stored = any(o["metadata"]["name"] == entry.name for o in emulator.stored("configmaps") if entry.name)
        fired.append((entry.name or entry.verb, stored))

    hook = kube_emulator.call(lambda: emulator.on_write(agent, 3, action))
    cms = f"/api/v1/namespaces/{ns}/configmaps"
    merge = {"Content-Type": "application/merge-patch+json"}
    try:
        with _client(base, agent) as mine, _client(base, "someone-else/1") as other:
            assert mine.post(cms, json={"metadata": {"name": "one"}}).status_code == 201  # write 1
            assert other.post(cms, json={"metadata": {"name": "theirs"}}).status_code == 201  # not counted
            assert mine.get(f"{cms}/one").status_code == 200  # a read: not counted
            assert mine.post(cms, json={"metadata": {"name": "one"}}).status_code == 409  # refused: not counted
            assert mine.post(cms, json={"metadata": {"name": "two"}}, params={"dryRun": "All"}).status_code == 201
            patch = json.dumps({"data": {"x": "y"}})
            assert mine.patch(f"{cms}/one", content=patch, headers=merge).status_code == 200  # write 2
            assert fired == []
            assert mine.post(cms, json={"metadata": {"name": "three"}}).status_code == 201  # write 3: fires
            assert fired == [("three", True)]
            assert mine.delete(f"{cms}/one").status_code == 200  # write 4: fired once only
    finally:
        kube_emulator.call(emulator.clear_write_hooks)
    assert fired == [("three", True)]
    assert hook.fired
    assert hook.seen == 3


def test_write_hook_kills_a_client_before_it_reads_the_answer(kube_emulator: EmulatorThread) -> None:
    """The restart tests' kill point: the 3rd write is applied, yet the killed client never saw its response."""
    ns = _namespace(kube_emulator.url)
    agent = unique("victim") + "/1"
    script = textwrap.dedent(
        f"""
        import sys, httpx
        with httpx.Client(base_url={kube_emulator.url!r}, headers={{"User-Agent": {agent!r}}}, timeout=30) as http:
            for i in range(1, 8):
                r = http.post("/api/v1/namespaces/{ns}/configmaps", json={{"metadata": {{"name": f"cm-{{i}}"}}}})
                print(i, r.status_code, flush=True)
        """
    )
    emulator = kube_emulator.emulator
    victims: list[subprocess.Popen[str]] = []
    kube_emulator.call(lambda: emulator.on_write(agent, 3, lambda _: victims[0].send_signal(signal.SIGKILL)))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    victims.append(process)
    try:
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        kube_emulator.call(emulator.clear_write_hooks)
    assert process.returncode == -signal.SIGKILL
    assert out.split() == ["1", "201", "2", "201"]  # it read two answers ...
    stored = kube_emulator.call(lambda: emulator.stored("configmaps"))
    names = sorted(o["metadata"]["name"] for o in stored if o["metadata"]["namespace"] == ns)
    assert names == ["cm-1", "cm-2", "cm-3"]  # ... and the server applied the third write, whose answer never came
