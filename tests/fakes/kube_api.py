"""A loopback Kubernetes API server speaking enough for the real kubectl.

It answers discovery, server-side apply, get/list/watch, merge and JSON patches: what
`kubectl apply --server-side`, `kubectl get`, `kubectl patch`, `kubectl rollout status` and
`kubectl rollout undo` send. In place of controllers, a workload settles as soon as it changes:
healthy, or, for an image listed in `broken`, stalled (a Deployment past its progress deadline,
an Argo Rollout degraded by a failed analysis), or, for an image in `hanging`, progressing
forever. Deployments keep ReplicaSets with revisions, as `kubectl rollout undo` needs them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

GROUPS = {  # group/version -> plural -> (kind, subresources)
    "v1": {"services": ("Service", []), "namespaces": ("Namespace", [])},
    "apps/v1": {"deployments": ("Deployment", ["status"]), "replicasets": ("ReplicaSet", [])},
    "policy/v1": {"poddisruptionbudgets": ("PodDisruptionBudget", [])},
    "argoproj.io/v1alpha1": {
        "rollouts": ("Rollout", ["status"]),
        "analysistemplates": ("AnalysisTemplate", []),
    },
}
ARGO_GROUP = "argoproj.io"
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"


class FakeKube:
    def __init__(
        self,
        broken: set[str] = frozenset(),
        hanging: set[str] = frozenset(),
        namespaces: tuple[str, ...] = ("driftloop",),
        argo: bool = True,
    ):
        self.broken, self.hanging, self.argo = set(broken), set(hanging), argo
        self.objects: dict[tuple[str, str, str, str], dict] = {
            ("v1", "namespaces", "", ns): {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "uid": str(uuid.uuid4())},
                "status": {"phase": "Active"},
            }
            for ns in namespaces
        }
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.version = 1
        self.stopping = threading.Event()
        fake = self

        class Handler(_Handler):
            kube = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeKube:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path, context: str = "fake") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def get(self, group_version: str, plural: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((group_version, plural, namespace, name)))

    def image_of(self, group_version: str, plural: str, namespace: str, name: str) -> str:
        obj = self.get(group_version, plural, namespace, name)
        assert obj is not None, f"no {plural}/{name} in {namespace}"
        return obj["spec"]["template"]["spec"]["containers"][0]["image"]

    # ------------------------------------------------------------ storage

    def store(self, key: tuple[str, str, str, str], obj: dict, old: dict | None) -> dict:
        """Keep `obj` with server-set metadata; a changed spec bumps the generation."""
        gv, plural, namespace, name = key
        meta = obj.setdefault("metadata", {})
        meta.update(name=name, namespace=namespace)
        obj["apiVersion"], obj["kind"] = gv, GROUPS[gv][plural][0]
        if old is None:
            meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
        else:
            meta.update(
                uid=old["metadata"]["uid"], creationTimestamp=old["metadata"]["creationTimestamp"]
            )
            changed = obj.get("spec") != old.get("spec")
            meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        self.objects[key] = obj
        if plural == "deployments":
            self.settle_deployment(key, obj)
        elif plural == "rollouts":
            self.settle_rollout(obj)
        return obj

    # ------------------------------------------------------------ controllers

    def settle_deployment(self, key: tuple[str, str, str, str], deploy: dict) -> None:
        """What the Deployment controller does, done at once: a ReplicaSet per template with a
        revision (reused on a rollback), then a status of healthy, stalled or progressing."""
        _, _, namespace, name = key
        template = deploy["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        sets = [
            obj
            for (gv, plural, ns, _), obj in self.objects.items()
            if plural == "replicasets" and ns == namespace and _owned_by(obj, deploy)
        ]
        revision = 1 + max((int(rs["metadata"]["annotations"][REVISION]) for rs in sets), default=0)
        current = next((rs for rs in sets if rs["metadata"]["labels"][HASH_LABEL] == digest), None)
        if current is None:
            rs_template = copy.deepcopy(template)
            rs_template["metadata"].setdefault("labels", {})[HASH_LABEL] = digest
            current = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{name}-{digest}",
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "labels": rs_template["metadata"]["labels"],
                    "annotations": {REVISION: str(revision)},
                    "ownerReferences": [_owner(deploy)],
                },
                "spec": {
                    "replicas": deploy["spec"]["replicas"],
                    "selector": deploy["spec"]["selector"],
                    "template": rs_template,
                },
            }
            self.objects[("apps/v1", "replicasets", namespace, current["metadata"]["name"])] = (
                current
            )
        elif current["metadata"]["annotations"][REVISION] != str(revision - 1):
            current["metadata"]["annotations"][REVISION] = str(revision)
        deploy["metadata"].setdefault("annotations", {})[REVISION] = current["metadata"][
            "annotations"
        ][REVISION]
        deploy["status"] = self.deployment_status(deploy)

    def deployment_status(self, deploy: dict) -> dict:
        replicas = deploy["spec"].get("replicas", 1)
        image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
        status = {
            "observedGeneration": deploy["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        if image in self.broken or image in self.hanging:
            # one new pod that never gets ready; maxUnavailable 0 keeps the old ones serving
            status.update(replicas=replicas + 1, updatedReplicas=1, unavailableReplicas=1)
            progressing["reason"] = "ReplicaSetUpdated"
        if image in self.broken:
            progressing.update(
                status="False",
                reason="ProgressDeadlineExceeded",
                message=f'ReplicaSet of "{image}" has timed out progressing.',
            )
        available = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
        status["conditions"] = [available, progressing]
        return status

    def settle_rollout(self, rollout: dict) -> None:
        """What the Argo Rollouts controller reports once a canary ends: Healthy, or Degraded by a
        failed analysis (aborted), or still Progressing."""
        image = rollout["spec"]["template"]["spec"]["containers"][0]["image"]
        status = rollout.get("status") or {}
        status["observedGeneration"] = str(rollout["metadata"]["generation"])
        if image in self.broken:
            status.update(
                phase="Degraded",
                abort=True,
                message='RolloutAborted: metric "error-ratio" assessed Failed due to '
                "failed (3) > failureLimit (2)",
            )
        elif image in self.hanging:
            status.update(phase="Progressing", message="more replicas need to be updated")
        else:
            status.update(phase="Healthy", message="")
            status.pop("abort", None)
        rollout["status"] = status


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.kube.requests.append(("GET", url.path))
        if not self.kube.argo and ARGO_GROUP in url.path:  # a cluster without Argo Rollouts
            return self.reply(404, _status(404, "NotFound", "the server could not find it"))
        discovery = _discovery(url.path, self.kube.url)
        if discovery is not None and url.path == "/apis" and not self.kube.argo:
            discovery["groups"] = [g for g in discovery["groups"] if g["name"] != ARGO_GROUP]
        if discovery is not None:
            return self.reply(200, discovery)
        parsed = _parse(url.path)
        if parsed is None:
            return self.reply(404, _status(404, "NotFound", f"no route {url.path}"))
        gv, plural, namespace, name, _ = parsed
        if name:
            obj = self.kube.get(gv, plural, namespace, name)
            if obj is None:
                return self.reply(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            return self.reply(200, obj)
        if query.get("watch") in ("true", "1"):
            return self.hold_watch(float(query.get("timeoutSeconds", 60)))
        return self.reply(200, self.listing(gv, plural, namespace, query))

    def do_PATCH(self) -> None:
        url = urlsplit(self.path)
        self.kube.requests.append(("PATCH", url.path))
        parsed = _parse(url.path)
        if parsed is None or not parsed[3]:
            return self.reply(404, _status(404, "NotFound", f"no route {url.path}"))
        gv, plural, namespace, name, sub = parsed
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.headers.get("Content-Type", "").split(";")[0]
        key = (gv, plural, namespace, name)
        with self.kube.lock:
            if namespace and ("v1", "namespaces", "", namespace) not in self.kube.objects:
                return self.reply(
                    404, _status(404, "NotFound", f'namespaces "{namespace}" not found')
                )
            old = self.kube.objects.get(key)
            if kind == "application/apply-patch+yaml":
                new = yaml.safe_load(body)
                if old is not None and "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            elif old is None:
                return self.reply(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            elif kind == "application/json-patch+json":
                new = _json_patch(copy.deepcopy(old), json.loads(body))
            else:  # merge and strategic merge: the same for the fields kubectl sends here
                new = _merge(copy.deepcopy(old), json.loads(body))
            if sub == "status":
                old["status"] = new.get("status", {})
                return self.reply(200, copy.deepcopy(old))
            saved = self.kube.store(key, new, copy.deepcopy(old) if old else None)
            return self.reply(201 if old is None else 200, copy.deepcopy(saved))

    def listing(self, gv: str, plural: str, namespace: str, query: dict[str, str]) -> dict:
        wanted_name = query.get("fieldSelector", "").removeprefix("metadata.name=")
        wanted_labels = dict(
            pair.split("=", 1) for pair in query.get("labelSelector", "").split(",") if pair
        )
        with self.kube.lock:
            items = [
                copy.deepcopy(obj)
                for (g, p, ns, name), obj in self.kube.objects.items()
                if (g, p, ns) == (gv, plural, namespace)
                and (not wanted_name or name == wanted_name)
                and wanted_labels.items() <= obj["metadata"].get("labels", {}).items()
            ]
            version = str(self.kube.version)
        kind = GROUPS[gv][plural][0]
        return {
            "apiVersion": gv,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def hold_watch(self, seconds: float) -> None:
        """Nothing changes on its own here: keep the watch open, with no events, until it ends."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        deadline = time.monotonic() + min(seconds, 120)
        while time.monotonic() < deadline and not self.kube.stopping.is_set():
            time.sleep(0.1)
        self.close_connection = True

    def reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _discovery(path: str, url: str) -> dict | None:
    host = urlsplit(url).netloc
    if path == "/version":
        return {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"}
    if path == "/openapi/v3":
        return {
            "paths": {
                gv_path(gv).lstrip("/"): {"serverRelativeURL": f"/openapi/v3{gv_path(gv)}"}
                for gv in GROUPS
            }
        }
    if path.startswith("/openapi/v3/"):
        return _openapi(path.removeprefix("/openapi/v3"))
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }
    if path == "/apis":
        groups = []
        for gv in GROUPS:
            if "/" in gv:
                group, version = gv.split("/")
                entry = {"groupVersion": gv, "version": version}
                groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    gv = path.removeprefix("/api/").removeprefix("/apis/")
    if gv in GROUPS and path in (f"/api/{gv}", f"/apis/{gv}"):
        resources = []
        for plural, (kind, subs) in GROUPS[gv].items():
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            namespaced = kind != "Namespace"
            base = {"singularName": kind.lower(), "namespaced": namespaced, "kind": kind}
            resources.append({"name": plural, **base, "verbs": verbs})
            resources += [
                {"name": f"{plural}/{sub}", **base, "verbs": ["get", "patch", "update"]}
                for sub in subs
            ]
        return {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}
    return None


def gv_path(gv: str) -> str:
    return f"/api/{gv}" if "/" not in gv else f"/apis/{gv}"


def _openapi(path: str) -> dict | None:
    """Just enough OpenAPI v3 for kubectl to see that PATCH takes `fieldValidation`, so it leaves
    validation to the server (which this fake skips) instead of downloading schemas."""
    gv = next((gv for gv in GROUPS if gv_path(gv) == path), None)
    if gv is None:
        return None
    group, _, version = gv.rpartition("/")
    paths = {}
    for plural, (kind, _) in GROUPS[gv].items():
        patch = {
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
            ],
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{path}/namespaces/{{namespace}}/{plural}/{{name}}"] = {"patch": patch}
    return {"openapi": "3.0.0", "info": {"title": "fake", "version": version}, "paths": paths}


def _parse(path: str) -> tuple[str, str, str, str, str] | None:
    """/api/v1/namespaces/NS/PLURAL[/NAME[/SUB]] or /apis/G/V/namespaces/... -> parts."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"]:
        gv, rest = parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 2:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    if gv == "v1" and rest[:1] == ["namespaces"] and len(rest) == 2:
        return gv, "namespaces", "", rest[1], ""  # cluster-scoped
    if len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in GROUPS.get(gv, {}):
        return None
    name = rest[3] if len(rest) > 3 else ""
    sub = rest[4] if len(rest) > 4 else ""
    return gv, rest[2], rest[1], name, sub


def _owner(deploy: dict) -> dict:
    meta = deploy["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owned_by(obj: dict, owner: dict) -> bool:
    return any(
        ref.get("uid") == owner["metadata"]["uid"] and ref.get("controller")
        for ref in obj["metadata"].get("ownerReferences", [])
    )


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge(target[key], value)
        else:
            target[key] = value
    return target


def _json_patch(target: dict, ops: list[dict]) -> dict:
    """RFC 6902 add/replace/remove, all `kubectl rollout undo` sends."""
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node = target
        for part in parents:
            node = node.setdefault(part, {})
        if op["op"] == "remove":
            node.pop(last, None)
        else:
            node[last] = op["value"]
    return target


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
