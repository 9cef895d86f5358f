"""A Kubernetes API emulator with real-server semantics, built on kmock's `KubernetesEmulator`.

kmock 0.8 serves objects over real HTTP but lacks what Kopf, kubectl and the official client rely on:
resourceVersion/uid/generation bookkeeping, 201/409/422 answers, a race-free watch, PUT, dryRun, selectors,
finalizers, garbage collection, the status subresource and CRD schema handling. This subclass keeps kmock's HTTP
server and its reaction DSL for non-API paths and answers every Kubernetes API path itself, from one in-memory store
that only the server's event loop touches (so no locks and no lost events between a list and a watch).

Use `EmulatorThread` to run it on 127.0.0.1 in a background thread, so that sync clients (kubernetes, kubectl,
Kopf in a subprocess) can talk to it from anywhere without sharing its event loop.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema  # type: ignore[import-untyped]
import kmock
import yaml

Obj = dict[str, Any]
StoreKey = tuple[str, str, str, str]  # group, plural, namespace ('' when cluster-scoped), name

WATCH_HISTORY = 10_000  # events kept per resource to resume watches from an older resourceVersion


class ApiError(Exception):
    """A failure rendered as a real `kind: Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclass
class ResourceType:
    """What discovery says about one resource, plus its CRD schema when it has one."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status_subresource: bool = False
    schema: Obj | None = None  # openAPIV3Schema (structural)
    printer_columns: list[Obj] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_id(self) -> tuple[str, str]:
        return self.group, self.plural


def _rt(
    gv: str, plural: str, kind: str, namespaced: bool = True, status: bool = False, short: Iterable[str] = ()
) -> ResourceType:
    group, _, version = gv.rpartition("/")
    return ResourceType(group, version, plural, kind, namespaced, kind.lower(), list(short), [], status)


BUILTINS: list[ResourceType] = [
    _rt("v1", "namespaces", "Namespace", namespaced=False, status=True, short=["ns"]),
    _rt("v1", "events", "Event", short=["ev"]),
    _rt("v1", "configmaps", "ConfigMap", short=["cm"]),
    _rt("v1", "secrets", "Secret"),
    _rt("v1", "services", "Service", status=True, short=["svc"]),
    _rt("v1", "pods", "Pod", status=True, short=["po"]),
    _rt("apps/v1", "deployments", "Deployment", status=True, short=["deploy"]),
    _rt("v1", "serviceaccounts", "ServiceAccount", short=["sa"]),
    _rt("events.k8s.io/v1", "events", "Event", short=["ev"]),
    _rt("rbac.authorization.k8s.io/v1", "roles", "Role"),
    _rt("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    _rt("coordination.k8s.io/v1", "leases", "Lease"),
    _rt("batch/v1", "jobs", "Job", status=True),
    _rt(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False, True, ["crd", "crds"]
    ),
]


def now_rfc3339() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------------
# Patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic-merge and apply patches: lists are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"json patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise ApiError(422, "Invalid", f"json patch path {path!r} does not exist")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; a failed `test` answers 422 as a real server does."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, "BadRequest", f"malformed json patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if kind == "test":
            if _walk(doc, parts, path) != op.get("value"):
                raise ApiError(422, "Invalid", f"the json patch test operation failed at {path}: value differs")
            continue
        if kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, source, op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, source, op["from"])
            doc = _add(doc, parts, value, path, replace=False)
        elif kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), path, replace=False)
        elif kind == "replace":
            _walk(doc, parts, path)
            doc = _add(doc, parts, copy.deepcopy(op.get("value")), path, replace=True)
        elif kind == "remove":
            doc = _remove(doc, parts, path)
        else:
            raise ApiError(400, "BadRequest", f"unknown json patch operation {kind!r}")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str, *, replace: bool) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f"json patch index in {path!r} is out of range")
    else:
        raise ApiError(422, "Invalid", f"json patch path {path!r} does not point into an object or list")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise ApiError(422, "Invalid", "cannot remove the whole document")
    parent = _walk(doc, parts[:-1], path)
    _walk(parent, parts[-1:], path)
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        del parent[int(parts[-1])]
    return doc


# ---------------------------------------------------------------------------------------------------------------
# Structural schemas: pruning, defaulting, validation (jsonschema) and CEL rules (celpy)


def _preserves(schema: Obj) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def prune(value: Any, schema: Obj, *, root: bool = False, dropped: list[str] | None = None, at: str = "") -> Any:
    """Drop fields the schema does not know, as the API server does for structural schemas (paths into `dropped`)."""
    if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema):
        props: Obj = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        keep_meta = root or schema.get("x-kubernetes-embedded-resource")
        out: Obj = {}
        for key, item in value.items():
            where = f"{at}.{key}" if at else key
            if keep_meta and key in ("apiVersion", "kind", "metadata"):
                out[key] = item
            elif key in props:
                out[key] = prune(item, props[key], dropped=dropped, at=where)
            elif isinstance(additional, dict):
                out[key] = prune(item, additional, dropped=dropped, at=where)
            elif _preserves(schema) or additional is True:
                out[key] = item
            elif dropped is not None:
                dropped.append(where)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], dropped=dropped, at=f"{at}[{i}]") for i, item in enumerate(value)]
    return value


def apply_defaults(value: Any, schema: Obj) -> Any:
    """Structural defaulting: a missing property with a `default` gets it, at every depth."""
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in list(value):
                if key not in schema.get("properties", {}):
                    value[key] = apply_defaults(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def to_jsonschema(schema: Any) -> Any:
    """Translate OpenAPI v3 structural-schema extensions into plain JSON Schema (draft 4 semantics)."""
    if isinstance(schema, list):
        return [to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    for key in ("properties", "patternProperties", "definitions"):
        if key in schema:
            out[key] = {name: to_jsonschema(s) for name, s in schema[key].items()}
    return out


def field_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class CelRules:
    """Evaluates `x-kubernetes-validations` with cel-python; compiled programs are cached per rule.

    cel-python implements standard CEL; the Kubernetes list extensions that rules commonly use (isSorted, sum,
    min, max, indexOf, lastIndexOf) are added here. Other Kubernetes libraries (quantity, url, ip, authz) are not.
    """

    def __init__(self) -> None:
        import celpy

        self._celpy: Any = celpy  # untyped
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}
        self._verdicts: dict[tuple[str, str, str], tuple[bool, str]] = {}
        types = celpy.celtypes

        def listed(value: Any) -> list[Any]:
            return list(value)

        self._functions: dict[str, Callable[..., Any]] = {
            "isSorted": lambda v: types.BoolType(all(a <= b for a, b in itertools.pairwise(listed(v)))),
            "sum": lambda v: sum(listed(v)[1:], listed(v)[0]) if listed(v) else types.IntType(0),
            "min": lambda v: min(listed(v)),
            "max": lambda v: max(listed(v)),
            "indexOf": lambda v, x: types.IntType(listed(v).index(x) if x in listed(v) else -1),
            "lastIndexOf": lambda v, x: types.IntType(
                len(listed(v)) - 1 - listed(v)[::-1].index(x) if x in listed(v) else -1
            ),
        }

    def check(self, value: Any, old: Any, schema: Obj, path: list[Any], errors: list[tuple[str, str]]) -> None:
        for rule in schema.get("x-kubernetes-validations", []):
            text = rule["rule"]
            if "oldSelf" in text and old is None:
                continue  # transition rules only run on updates
            ok, detail = self._verdict(text, value, old)
            if not ok:
                message = rule.get("message") or f"failed rule: {text}"
                where = field_path(path) + rule.get("fieldPath", "")
                shown = (
                    '"object"'
                    if isinstance(value, dict)
                    else '"array"'
                    if isinstance(value, list)
                    else json.dumps(value)
                )
                errors.append((where, f"Invalid value: {shown}: {message}{detail}"))
        self._children(value, old, schema, path, errors)

    def _verdict(self, text: str, value: Any, old: Any) -> tuple[bool, str]:
        """A rule's outcome; memoised on the exact values, since rules are pure (celpy takes ~3 ms a rule)."""
        key = (text, json.dumps(value, sort_keys=True), json.dumps(old, sort_keys=True))
        cached = self._verdicts.get(key)
        if cached is not None:
            return cached
        program = self._programs.get(text)
        if program is None:
            program = self._programs[text] = self._env.program(self._env.compile(text), functions=self._functions)
        activation = {"self": self._celpy.json_to_cel(value)}
        if old is not None:
            activation["oldSelf"] = self._celpy.json_to_cel(old)
        try:
            verdict = (bool(program.evaluate(activation)), "")
        except Exception as exc:  # a rule that cannot be evaluated is a failed rule, as on a real server
            verdict = (False, f" (evaluation error: {exc})")
        if len(self._verdicts) > 100_000:
            self._verdicts.clear()
        self._verdicts[key] = verdict
        return verdict

    def _children(self, value: Any, old: Any, schema: Obj, path: list[Any], errors: list[tuple[str, str]]) -> None:
        if isinstance(value, dict):
            for key, sub in schema.get("properties", {}).items():
                if key in value:
                    old_item = old.get(key) if isinstance(old, dict) else None
                    self.check(value[key], old_item, sub, [*path, key], errors)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                self.check(item, None, schema["items"], [*path, index], errors)


# ---------------------------------------------------------------------------------------------------------------
# Selectors

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_matcher(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Parse a label selector (=, ==, !=, in, notin, exists, !exists) into a predicate."""
    terms: list[tuple[str, str, set[str]]] = []  # (operator, key, values)
    for raw in _split_selector(text):
        term = raw.strip()
        if match := _SET_RE.match(term):
            terms.append((match[2], match[1], {v.strip() for v in match[3].split(",") if v.strip()}))
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            terms.append(("notin", key, {value}))
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            terms.append(("in", key, {value}))
        elif term.startswith("!"):
            terms.append(("absent", term[1:].strip(), set()))
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", term):
            terms.append(("exists", term, set()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse label selector term {term!r}")

    def matches(labels: Mapping[str, str]) -> bool:
        for op, key, values in terms:
            if op == "in":
                ok = labels.get(key) in values
            elif op == "notin":
                ok = labels.get(key) not in values
            else:
                ok = (key in labels) == (op == "exists")
            if not ok:
                return False
        return True

    return matches


def field_matcher(text: str) -> Callable[[Obj], bool]:
    """Field selectors on metadata.name, metadata.namespace and any other dotted path compared as strings."""
    terms: list[tuple[list[str], str, bool]] = []  # (path, value, negated)
    for raw in _split_selector(text):
        term = raw.strip()
        parts = re.split(r"!=|==|=", term, maxsplit=1)
        if len(parts) != 2:
            raise ApiError(400, "BadRequest", f"unable to parse field selector term {term!r}")
        terms.append((parts[0].strip().split("."), parts[1].strip(), "!=" in term))

    def value_at(obj: Obj, path: list[str]) -> str:
        node: Any = obj
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        return "" if node is None else str(node)

    def matches(obj: Obj) -> bool:
        return all((value_at(obj, path) == value) != negated for path, value, negated in terms)

    return matches


# ---------------------------------------------------------------------------------------------------------------
# The emulator


@dataclass
class _Watcher:
    store_id: tuple[str, str]
    queue: asyncio.Queue[tuple[int, str, Obj]]
    user_agent: str = ""


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass
class AuditEntry:
    """One API request as an audit log sees it: enough to check RBAC rules and to count a client's writes."""

    verb: str  # get, list, watch, create, update, patch, delete, deletecollection (RBAC's verbs)
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user_agent: str
    code: int = 0  # the answer's status; 0 while a watch is still streaming
    field_selector: str = ""  # e.g. metadata.name=NAME: which object a list or watch follows


@dataclass
class WriteHook:
    """Runs `action` in the emulator's loop right after the `after`-th successful write by a client whose
    User-Agent starts with `user_agent`, before that write's response is sent: a deterministic kill point."""

    user_agent: str | tuple[str, ...]  # one prefix or several (e.g. the operator's own client and Kopf's)
    after: int
    action: Callable[[AuditEntry], None]
    namespace: str = ""  # count only writes in this namespace (several operators side by side); "": all
    match: Callable[[AuditEntry], bool] | None = None  # count only the writes it accepts (one kind of write)
    seen: int = 0
    fired: bool = False


def request_target(path: str) -> tuple[str, str, str, str, str] | None:
    """(group, resource, namespace, name, subresource) of an API resource path, without knowing the type."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    return group, rest[0], namespace, rest[1] if len(rest) > 1 else "", "/".join(rest[2:])


def audit_verb(method: str, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request (what the API server's authorizer checks)."""
    if method == "GET":
        return "watch" if watch else "get" if named else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return method.lower()


@attrs.define(kw_only=True)
class SluiceKubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the semantics of a real API server (see the module docstring)."""

    _types: dict[tuple[str, str, str], ResourceType] = attrs.field(factory=dict, init=False)
    store: dict[StoreKey, Obj] = attrs.field(factory=dict, init=False)  # every object; read it on the thread
    _rv: int = attrs.field(default=1, init=False)
    _history: dict[tuple[str, str], collections.deque[tuple[int, str, Obj]]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=WATCH_HISTORY)), init=False
    )
    _watchers: list[_Watcher] = attrs.field(factory=list, init=False)
    cel: CelRules | None = attrs.field(default=None, init=False)  # None: CRD validation rules are not enforced
    _validators: dict[int, Any] = attrs.field(factory=dict, init=False)
    writes: int = attrs.field(default=0, init=False)
    _strict: bool = attrs.field(default=False, init=False)
    cel_rules: bool = True  # False skips x-kubernetes-validations (faster scale runs); schemas still apply
    audit: list[AuditEntry] = attrs.field(factory=list, init=False)  # every API resource request, in arrival order
    audit_enabled: bool = True
    _write_hooks: list[WriteHook] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.cel_rules:
            self.cel = CelRules()
        for rt in BUILTINS:
            self.register(rt)
        for name in ("default", "kube-system", "kube-public"):
            self._write_new(self._types["", "v1", "namespaces"], {"metadata": {"name": name}}, emit=False)

    # -- registry --------------------------------------------------------------------------------------------

    def register(self, rt: ResourceType) -> None:
        self._types[rt.group, rt.version, rt.plural] = rt

    def register_crd(self, crd: Obj) -> list[ResourceType]:
        """Serve every served version of a CustomResourceDefinition (what the API server does on CRD create)."""
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        if not names.get("plural") or not names.get("kind") or not spec.get("group"):
            raise ApiError(422, "Invalid", "spec.names.plural, spec.names.kind and spec.group are required")
        out = []
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            rt = ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", names["kind"].lower()),
                short_names=list(names.get("shortNames", [])),
                categories=list(names.get("categories", [])),
                status_subresource="status" in (version.get("subresources") or {}),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=list(version.get("additionalPrinterColumns", [])),
            )
            self.register(rt)
            out.append(rt)
        return out

    def unregister_crd(self, crd: Obj) -> None:
        spec = crd.get("spec", {})
        group, plural = spec.get("group"), spec.get("names", {}).get("plural")
        for key in [k for k in self._types if k[0] == group and k[2] == plural]:
            del self._types[key]
        for stored in [k for k in self.store if k[0] == group and k[1] == plural]:
            del self.store[stored]  # a CRD takes its objects with it

    @property
    def resource_types(self) -> list[ResourceType]:
        return list(self._types.values())

    @property
    def resource_version(self) -> int:
        return self._rv

    def history(self, plural: str, group: str = "", namespace: str | None = None) -> list[tuple[str, Obj]]:
        """The recent watch events of one resource (deep copies, oldest first): every state an object went through;
        only `namespace`'s when given (filtered before copying: a long run's history is large)."""
        return [
            (kind, copy.deepcopy(obj))
            for _, kind, obj in self._history[group, plural]
            if namespace is None or (obj.get("metadata") or {}).get("namespace") == namespace
        ]

    def stored(self, plural: str, group: str = "", namespace: str | None = None) -> list[Obj]:
        """All stored objects of one resource (deep copies), for assertions from the server's thread; only
        `namespace`'s when given."""
        return [
            copy.deepcopy(o)
            for (g, p, ns, _), o in self.store.items()
            if g == group and p == plural and (namespace is None or ns == namespace)
        ]

    # -- audit and hooks -------------------------------------------------------------------------------------

    def on_write(
        self,
        user_agent: str | tuple[str, ...],
        after: int,
        action: Callable[[AuditEntry], None],
        namespace: str = "",
        match: Callable[[AuditEntry], bool] | None = None,
    ) -> WriteHook:
        """Register a `WriteHook` (call from the emulator's loop, e.g. via `EmulatorThread.call`)."""
        if after < 1:
            raise ValueError("after counts writes from 1")
        hook = WriteHook(user_agent, after, action, namespace, match)
        self._write_hooks.append(hook)
        return hook

    def clear_write_hooks(self, namespace: str | None = None) -> None:
        """Drop every hook (None) or those of one namespace."""
        self._write_hooks[:] = [h for h in self._write_hooks if namespace is not None and h.namespace != namespace]

    def watching(self, plural: str, group: str = "", user_agent: str | tuple[str, ...] = "") -> int:
        """How many watches of one resource are open now, by clients whose User-Agent starts with `user_agent`:
        the signal that a client is following, instead of a sleep long enough for its watch to open."""
        return sum(1 for w in self._watchers if w.store_id == (group, plural) and w.user_agent.startswith(user_agent))

    def audited(self, user_agent: str | tuple[str, ...] = "") -> list[AuditEntry]:
        """The audit log of the clients whose User-Agent starts with `user_agent` (all when empty)."""
        return [e for e in self.audit if e.user_agent.startswith(user_agent)]

    def _written(self, entry: AuditEntry) -> None:
        for hook in self._write_hooks:
            if hook.namespace and entry.namespace != hook.namespace:
                continue
            if hook.match is not None and not hook.match(entry):
                continue
            if not hook.fired and entry.user_agent.startswith(hook.user_agent):
                hook.seen += 1
                if hook.seen == hook.after:
                    hook.fired = True
                    hook.action(entry)

    # -- HTTP entry point ------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = raw_request.path.rstrip("/") or "/"
        entry: AuditEntry | None = None
        try:
            if path in ("/api", "/apis", "/version", "/") or re.fullmatch(r"/api/[^/]+|/apis(/[^/]+){1,2}", path):
                found = self._discovery(path)
                if found is not None:
                    return aiohttp.web.json_response(found)
            if path.startswith("/openapi/"):
                return aiohttp.web.json_response(self._openapi(path))
            entry = self._audit_entry(raw_request, path)
            route = self._route(path)
            if route is None:
                return await super().__call__(raw_request)
            response = await self._serve(raw_request, *route)
        except ApiError as exc:
            response = aiohttp.web.json_response(exc.status(), status=exc.code)
        except Exception as exc:  # an emulator bug still answers a Status, never a dropped connection
            error = ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}")
            response = aiohttp.web.json_response(error.status(), status=500)
        if entry is not None:
            entry.code = response.status
            if entry.verb == "create" and response.status == 201 and isinstance(response, aiohttp.web.Response):
                entry.name = json.loads(response.body or b"{}").get("metadata", {}).get("name", "")  # type: ignore[arg-type]
            dry_run = "All" in raw_request.query.getall("dryRun", [])
            if entry.verb in WRITE_VERBS and response.status < 300 and not dry_run:
                self._written(entry)  # the write is applied; its response is not sent yet
        return response

    def _audit_entry(self, raw: aiohttp.web.BaseRequest, path: str) -> AuditEntry | None:
        target = request_target(path)
        if target is None or (not self.audit_enabled and not self._write_hooks):
            return None
        group, resource, namespace, name, sub = target
        watch = raw.query.get("watch") in ("true", "1")
        verb = audit_verb(raw.method.upper(), bool(name), watch)
        entry = AuditEntry(
            verb,
            group,
            resource,
            sub,
            namespace,
            name,
            raw.headers.get("User-Agent", ""),
            field_selector=raw.query.get("fieldSelector", ""),
        )
        if self.audit_enabled:
            self.audit.append(entry)
        return entry

    def _route(self, path: str) -> tuple[ResourceType, str, str | None, str | None] | None:
        """Split an API path into (type, namespace, name, subresource); None when it is no resource path."""
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rt = self._types.get((group, version, rest[0]))
        if rt is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if rt.namespaced != bool(namespace) and len(rest) > 1:
            raise ApiError(404, "NotFound", f"{rt.plural} is {'' if rt.namespaced else 'not '}namespaced ({path})")
        name = rest[1] if len(rest) > 1 else None
        sub = "/".join(rest[2:]) or None
        if sub is not None and not (sub == "status" and rt.status_subresource):
            raise ApiError(404, "NotFound", f"{rt.plural} has no subresource {sub!r}")
        return rt, namespace, name, sub

    # -- discovery -------------------------------------------------------------------------------------------

    def _discovery(self, path: str) -> Obj | None:
        types = list(self._types.values())
        groups: dict[str, list[str]] = {}
        for rt in types:
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-sluice-emulator", "platform": "linux/amd64"}
        if path == "/":
            paths = ["/api", "/api/v1", "/apis", "/version"]
            paths += [f"/apis/{g}" for g in groups] + [f"/apis/{g}/{v}" for g, vs in groups.items() for v in vs]
            return {"paths": sorted(paths)}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}

        def group_doc(name: str) -> Obj:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups]}
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2:
            if parts[1] not in groups:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(parts[1])}
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        chosen = [rt for rt in types if rt.group == group and rt.version == version]
        if not chosen:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources: list[Obj] = []
        for rt in chosen:
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.singular,
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": verbs,
                    "shortNames": rt.short_names,
                    "categories": rt.categories,
                }
            )
            if rt.status_subresource:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": chosen[0].api_version,
            "resources": resources,
        }

    def _openapi(self, path: str) -> Obj:
        """OpenAPI v3 documents from the CRD schemas: enough for `kubectl explain` and server-side validation."""
        by_gv: dict[str, list[ResourceType]] = {}
        for rt in self._types.values():
            prefix = f"apis/{rt.group}/{rt.version}" if rt.group else f"api/{rt.version}"
            by_gv.setdefault(prefix, []).append(rt)
        if path == "/openapi/v3":
            return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={self._rv}"} for gv in by_gv}}
        chosen = by_gv.get(path.removeprefix("/openapi/v3/"))
        if not path.startswith("/openapi/v3/") or chosen is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        schemas: Obj = {}
        paths: Obj = {}
        for rt in chosen:
            gvk = [{"group": rt.group, "version": rt.version, "kind": rt.kind}]
            reversed_group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
            schema = (
                copy.deepcopy(rt.schema)
                if rt.schema
                else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            )
            schema["x-kubernetes-group-version-kind"] = gvk
            schemas[f"{reversed_group}.{rt.version}.{rt.kind}"] = schema
            base = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
            where = (
                f"{base}/namespaces/{{namespace}}/{rt.plural}/{{name}}"
                if rt.namespaced
                else f"{base}/{rt.plural}/{{name}}"
            )
            parameters = [
                {"name": name, "in": "query", "schema": {"type": "string"}} for name in ("fieldValidation", "dryRun")
            ]
            operation = {"x-kubernetes-group-version-kind": gvk[0], "parameters": parameters, "responses": {}}
            paths[where] = {"patch": operation, "put": operation}
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes (Sluice API emulator)", "version": "v1.32.0"},
            "paths": paths,
            "components": {"schemas": schemas},
        }

    # -- request dispatch ------------------------------------------------------------------------------------

    async def _serve(
        self, raw: aiohttp.web.BaseRequest, rt: ResourceType, namespace: str, name: str | None, sub: str | None
    ) -> aiohttp.web.StreamResponse:
        query = raw.query
        method = raw.method.upper()
        dry_run = "All" in query.getall("dryRun", [])
        if method == "GET" and query.get("watch") in ("true", "1"):
            return await self._watch(raw, rt, namespace, name)
        as_table = "as=Table" in raw.headers.get("Accept", "")
        if method == "GET" and name is None:
            listed = self._list(rt, namespace, query)
            return aiohttp.web.json_response(self._table(rt, listed["items"]) if as_table else listed)
        if method == "GET" and name is not None:
            obj = self._output(rt, self._get(rt, namespace, name))
            return aiohttp.web.json_response(self._table(rt, [obj]) if as_table else obj)
        body = await self._body(raw)
        # Everything below runs without awaiting, so a per-request flag on the emulator is safe in its one loop.
        self._strict = query.get("fieldValidation") == "Strict"
        if method == "POST" and name is None:
            obj = self.create(rt, namespace, body, dry_run=dry_run)
            return aiohttp.web.json_response(self._output(rt, obj), status=201)
        if method == "PUT" and name is not None:
            obj = self._replace(rt, namespace, name, sub, body, dry_run=dry_run)
            return aiohttp.web.json_response(self._output(rt, obj))
        if method == "PATCH" and name is not None:
            obj, created = self._patch(rt, namespace, name, sub, raw.content_type, body, dry_run=dry_run)
            return aiohttp.web.json_response(self._output(rt, obj), status=201 if created else 200)
        if method == "DELETE" and name is not None:
            policy = body.get("propagationPolicy") if isinstance(body, dict) else None
            policy = query.get("propagationPolicy", policy)
            result, code = self._delete(rt, namespace, name, dry_run=dry_run, orphan=policy == "Orphan")
            return aiohttp.web.json_response(result, status=code)
        if method == "DELETE":
            selector = label_matcher(query.get("labelSelector", ""))
            for obj in self._select(rt, namespace):
                if selector(obj["metadata"].get("labels", {})):
                    self._delete(rt, namespace or "", obj["metadata"]["name"], dry_run=dry_run, orphan=False)
            return aiohttp.web.json_response(
                {"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}
            )
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {raw.path}")

    def _table(self, rt: ResourceType, items: list[Obj]) -> Obj:
        """Server-side printing (what `kubectl get` asks for): Name, the CRD's printer columns, else Age."""
        columns = [
            {"name": "Name", "type": "string", "format": "name", "description": "Name", "jsonPath": ".metadata.name"}
        ]
        columns += rt.printer_columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        rows = []
        for obj in items:
            cells = [_cell(obj, column) for column in columns]
            partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
            rows.append({"cells": cells, "object": partial})
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "columnDefinitions": [
                {
                    "name": c["name"],
                    "type": c.get("type", "string"),
                    "format": c.get("format", ""),
                    "description": c.get("description", ""),
                    "priority": c.get("priority", 0),
                }
                for c in columns
            ],
            "rows": rows,
        }

    async def _body(self, raw: aiohttp.web.BaseRequest) -> Any:
        text = await raw.text()
        if not text.strip():
            return {}
        try:
            if "yaml" in raw.content_type:
                return yaml.safe_load(text)
            return json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"the request body is not valid {raw.content_type}: {exc}") from exc

    def _key(self, rt: ResourceType, namespace: str, name: str) -> StoreKey:
        return rt.group, rt.plural, namespace if rt.namespaced else "", name

    def _output(self, rt: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version, rt.kind
        return out

    def _not_found(self, rt: ResourceType, name: str) -> ApiError:
        group = f".{rt.group}" if rt.group else ""
        return ApiError(
            404,
            "NotFound",
            f'{rt.plural}{group} "{name}" not found',
            {"name": name, "group": rt.group, "kind": rt.plural},
        )

    def _get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.store.get(self._key(rt, namespace, name))
        if obj is None:
            raise self._not_found(rt, name)
        return obj

    def _select(self, rt: ResourceType, namespace: str) -> list[Obj]:
        return [
            o
            for (g, p, ns, _), o in self.store.items()
            if g == rt.group and p == rt.plural and (not namespace or ns == namespace)
        ]

    def _list(self, rt: ResourceType, namespace: str, query: Mapping[str, str]) -> Obj:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""))
        items = [
            self._output(rt, o)
            for o in self._select(rt, namespace)
            if labels(o["metadata"].get("labels", {})) and fields(o)
        ]
        return {
            "apiVersion": rt.api_version,
            "kind": f"{rt.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    # -- writes ----------------------------------------------------------------------------------------------

    def _emit(self, rt: ResourceType, kind: str, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        event = (rv, kind, self._output(rt, obj))
        self._history[rt.store_id].append(event)
        for watcher in self._watchers:
            if watcher.store_id == rt.store_id:
                watcher.queue.put_nowait(event)

    def _bump(self) -> str:
        self._rv += 1
        self.writes += 1
        return str(self._rv)

    def _prepare(self, rt: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        """Prune, default and validate against the CRD schema; raises 422 naming each failing field."""
        if rt.schema is None:
            return obj
        dropped: list[str] = []
        obj = prune(obj, rt.schema, root=True, dropped=dropped)
        if dropped and self._strict:  # fieldValidation=Strict (kubectl's default) refuses instead of pruning
            unknown = ", ".join(f'unknown field "{path}"' for path in dropped)
            raise ApiError(
                400,
                "BadRequest",
                f"{rt.kind} in version {rt.version!r} cannot be handled: strict decoding error: {unknown}",
            )
        obj = apply_defaults(obj, rt.schema)
        validator = self._validators.get(id(rt.schema))
        if validator is None:
            validator = self._validators[id(rt.schema)] = jsonschema.Draft4Validator(to_jsonschema(rt.schema))
        errors: list[tuple[str, str]] = []
        checked = {k: v for k, v in obj.items() if k != "metadata"}
        for error in sorted(validator.iter_errors(checked), key=lambda e: list(map(str, e.absolute_path))):
            where = field_path(error.absolute_path) or "<root>"
            errors.append((where, f"Invalid value: {json.dumps(error.instance)[:80]}: {error.message}"))
        if self.cel is not None and not errors:
            old_checked = {k: v for k, v in old.items() if k != "metadata"} if old else None
            self.cel.check(checked, old_checked, rt.schema, [], errors)
        if errors:
            name = obj.get("metadata", {}).get("name", "")
            group = f".{rt.group}" if rt.group else ""
            text = "; ".join(f"{where}: {why}" for where, why in errors)
            causes = [{"reason": "FieldValueInvalid", "field": where, "message": why} for where, why in errors]
            raise ApiError(
                422,
                "Invalid",
                f'{rt.kind}{group} "{name}" is invalid: {text}',
                {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes},
            )
        return obj

    def _check_kind(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", f"the request body must be a {rt.kind} object")
        if body.get("kind") not in (None, rt.kind):
            raise ApiError(400, "BadRequest", f"the body's kind {body['kind']!r} does not match {rt.kind!r}")
        if body.get("apiVersion") not in (None, rt.api_version):
            raise ApiError(400, "BadRequest", f"the body's apiVersion {body['apiVersion']!r} is not {rt.api_version!r}")
        meta = body.get("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        return body

    def create(self, rt: ResourceType, namespace: str, body: Any, *, dry_run: bool = False) -> Obj:
        """Store a new object as a POST would (events and all); call it on the emulator's thread."""
        obj = copy.deepcopy(self._check_kind(rt, body))
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(
                    400, "BadRequest", f"the namespace of the object ({meta['namespace']}) does not match the request"
                )
            if not namespace:
                raise ApiError(400, "BadRequest", f"{rt.plural} are namespaced: create them under a namespace")
            if ("", "namespaces", "", namespace) not in self.store:
                raise ApiError(
                    404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
                )
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422, "Invalid", f"{rt.kind}: metadata.name: Required value: name or generateName is required"
                )
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]) or len(meta["name"]) > 253:
            raise ApiError(
                422, "Invalid", f"metadata.name: Invalid value: {meta['name']!r}: must be a lowercase RFC 1123 name"
            )
        if self._key(rt, namespace, meta["name"]) in self.store:
            group = f".{rt.group}" if rt.group else ""
            raise ApiError(
                409,
                "AlreadyExists",
                f'{rt.plural}{group} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": rt.group, "kind": rt.plural},
            )
        if rt.status_subresource and rt.schema is not None:
            obj.pop("status", None)  # custom resources ignore status on create when /status exists
        return self._write_new(rt, obj, dry_run=dry_run)

    def _write_new(self, rt: ResourceType, obj: Obj, *, dry_run: bool = False, emit: bool = True) -> Obj:
        obj = self._prepare(rt, obj, None)
        meta = obj["metadata"]
        for transient in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(transient, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if rt.plural == "namespaces":
            obj.setdefault("status", {})["phase"] = "Active"
        if dry_run:
            return obj
        meta["resourceVersion"] = self._bump()
        self.store[self._key(rt, meta.get("namespace", ""), meta["name"])] = obj
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self.register_crd(obj)
            obj["status"] = {
                "conditions": [{"type": "Established", "status": "True"}],
                "acceptedNames": obj["spec"]["names"],
            }
        if emit:
            self._emit(rt, "ADDED", obj)
        return obj

    def _update(self, rt: ResourceType, old: Obj, new: Any, sub: str | None, *, dry_run: bool) -> Obj:
        """Store a new full state of an existing object with real-server bookkeeping."""
        new = copy.deepcopy(self._check_kind(rt, new))
        new_meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        sent_rv = new_meta.get("resourceVersion")
        if sent_rv not in (None, "") and str(sent_rv) != old_meta["resourceVersion"]:
            group = f".{rt.group}" if rt.group else ""
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.plural}{group} "{old_meta["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                {"name": old_meta["name"], "group": rt.group, "kind": rt.plural},
            )
        if rt.status_subresource:
            if sub == "status":  # only the status stanza changes through /status
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
                new_meta = new["metadata"]
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        for immutable in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp"):
            if immutable in old_meta:
                new_meta[immutable] = old_meta[immutable]
            else:
                new_meta.pop(immutable, None)
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers", [])) - set(old_meta.get("finalizers", []))
            if added:
                raise ApiError(
                    422, "Forbidden", f"no new finalizers can be added while the object is deleted: {sorted(added)}"
                )
        result: Obj = self._prepare(rt, new, old)
        new_meta = result["metadata"]
        spec_changed = {k: v for k, v in result.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        if spec_changed:
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if not new_meta.get("finalizers"):
            new_meta.pop("finalizers", None)
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        if result == old or dry_run:
            return result  # a no-op write does not bump resourceVersion (as on a real server)
        new_meta["resourceVersion"] = self._bump()
        key = self._key(rt, new_meta.get("namespace", ""), new_meta["name"])
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            del self.store[key]
            self._emit(rt, "DELETED", result)
            self._collect(rt, result)
            return result
        self.store[key] = result
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self.register_crd(result)
        self._emit(rt, "MODIFIED", result)
        return result

    def _replace(
        self, rt: ResourceType, namespace: str, name: str, sub: str | None, body: Any, *, dry_run: bool
    ) -> Obj:
        old = self._get(rt, namespace, name)
        body = self._check_kind(rt, body)
        meta = body.get("metadata", {})
        if meta.get("name") not in (None, name):
            raise ApiError(
                400, "BadRequest", f"the name of the object ({meta['name']}) does not match the URL ({name})"
            )
        return self._update(rt, old, body, sub, dry_run=dry_run)

    def _patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        sub: str | None,
        content_type: str,
        body: Any,
        *,
        dry_run: bool,
    ) -> tuple[Obj, bool]:
        key = self._key(rt, namespace, name)
        old = self.store.get(key)
        if content_type == "application/apply-patch+yaml" and old is None:
            body = self._check_kind(rt, body)
            body.setdefault("metadata", {})["name"] = name
            return self.create(rt, namespace, body, dry_run=dry_run), True
        if old is None:
            raise self._not_found(rt, name)
        if content_type == "application/json-patch+json":
            new = json_patch(self._output(rt, old), body)
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", f"a {content_type} patch must be an object")
            new = merge_patch(self._output(rt, old), body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the patch content type {content_type!r} is not supported")
        return self._update(rt, old, new, sub, dry_run=dry_run), False

    def _delete(self, rt: ResourceType, namespace: str, name: str, *, dry_run: bool, orphan: bool) -> tuple[Obj, int]:
        obj = self._get(rt, namespace, name)
        meta = obj["metadata"]
        if meta.get("finalizers"):
            if dry_run or meta.get("deletionTimestamp"):
                return self._output(rt, obj), 200
            meta["deletionTimestamp"] = now_rfc3339()
            meta["deletionGracePeriodSeconds"] = 0
            meta["resourceVersion"] = self._bump()
            self._emit(rt, "MODIFIED", obj)
            return self._output(rt, obj), 200
        details = {"name": name, "group": rt.group, "kind": rt.plural, "uid": meta["uid"]}
        if not dry_run:
            del self.store[self._key(rt, namespace, name)]
            meta["resourceVersion"] = self._bump()
            self._emit(rt, "DELETED", obj)
            if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
                self.unregister_crd(obj)
            if not orphan:
                self._collect(rt, obj)
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "details": details}, 200

    def _collect(self, rt: ResourceType, owner: Obj) -> None:
        """Background garbage collection: dependents of a removed owner (and a namespace's objects) go next."""
        uid = owner["metadata"]["uid"]
        is_namespace = rt.group == "" and rt.plural == "namespaces"

        def sweep() -> None:
            for (group, plural, ns, name), obj in list(self.store.items()):
                owners = obj["metadata"].get("ownerReferences", [])
                doomed = any(ref.get("uid") == uid for ref in owners)
                doomed = doomed or (is_namespace and ns == owner["metadata"]["name"])
                if doomed:
                    rt = next(t for t in self._types.values() if t.group == group and t.plural == plural)
                    if (group, plural, ns, name) in self.store:
                        self._delete(rt, ns, name, dry_run=False, orphan=False)

        asyncio.get_running_loop().call_soon(sweep)

    # -- watch -----------------------------------------------------------------------------------------------

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, rt: ResourceType, namespace: str, name: str | None
    ) -> aiohttp.web.StreamResponse:
        query = raw.query
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", "") if name is None else f"metadata.name={name}")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        since = query.get("resourceVersion", "")
        if since and not since.isdigit():
            raise ApiError(400, "BadRequest", f"resourceVersion {since!r} is not a valid resource version")

        as_table = "as=Table" in raw.headers.get("Accept", "")

        def line(kind: str, obj: Obj) -> bytes:
            shown = self._table(rt, [obj]) if as_table else obj  # `kubectl get -w` asks for one-row Tables
            return json.dumps({"type": kind, "object": shown}).encode() + b"\n"

        def matches(obj: Obj) -> bool:
            meta = obj["metadata"]
            in_ns = not namespace or meta.get("namespace") == namespace
            return in_ns and labels(meta.get("labels", {})) and fields(obj)

        # Subscribe first, then take the snapshot: nothing between the two can be lost (same loop, no await).
        watcher = _Watcher(rt.store_id, asyncio.Queue(), raw.headers.get("User-Agent", ""))
        self._watchers.append(watcher)
        initial: list[tuple[int, str, Obj]]
        if since in ("", "0"):
            initial = [(self._rv, "ADDED", self._output(rt, o)) for o in self._select(rt, namespace)]
            last = self._rv
        else:
            history = self._history[rt.store_id]
            last = int(since)
            if history and history[0][0] > last + 1 and len(history) == history.maxlen:
                self._watchers.remove(watcher)
                gone = ApiError(410, "Expired", f"too old resource version: {since} ({history[0][0]})")
                response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
                await response.prepare(raw)
                await response.write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
                return response
            initial = [e for e in history if e[0] > last]
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        try:
            await response.prepare(raw)
            for _, kind, obj in initial:
                if matches(obj):
                    await response.write(line(kind, obj))
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    rv, kind, obj = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if rv > last and matches(obj):
                    await response.write(line(kind, obj))
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(watcher)
        return response


def _cell(obj: Obj, column: Obj) -> Any:
    """One printer-column cell: a simple JSONPath (.a.b, .a[0].b); dates shown as an age, like the server."""
    node: Any = obj
    for part in re.findall(r"[^.\[\]]+", column.get("jsonPath", "")):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            node = None
    if node is None:
        return "<none>" if column.get("type") != "date" else "<unknown>"
    if column.get("type") == "date" and isinstance(node, str):
        born = datetime.datetime.strptime(node, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        seconds = int((datetime.datetime.now(tz=datetime.UTC) - born).total_seconds())
        return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return node


def load_crd_files(paths: Iterable[Path]) -> list[Obj]:
    """Read CRD documents from YAML files (multi-document files allowed)."""
    crds: list[Obj] = []
    for path in paths:
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


class EmulatorThread:
    """Runs a `SluiceKubeEmulator` on 127.0.0.1 (free port) in its own thread and event loop; always stoppable."""

    def __init__(self, emulator: SluiceKubeEmulator | None = None) -> None:
        self.emulator = SluiceKubeEmulator() if emulator is None else emulator
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._ready: Future[str] = Future()
        self._stop: asyncio.Event | None = None
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with kmock.Server(self.emulator, host="127.0.0.1") as server:
                self._ready.set_result(str(server.url).rstrip("/"))
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def start(self) -> str:
        self._thread.start()
        self.url = self._ready.result(timeout=30)
        return self.url

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the emulator's loop (the store is only touched there) and return its result."""

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout=30)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
            ],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))
        return path
