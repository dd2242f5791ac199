"""Offline checks of taphook's Kubernetes manifests (run by deploy/check.sh).

    python kubernetes.py schema [--crd-node PREFIX] FILE...
        Every document against the Kubernetes OpenAPI schemas bundled in the
        PyPI package kubernetes-validate, strict (unknown fields are errors),
        for each version in K8S_VERSIONS. monitoring.coreos.com documents go
        to servicemonitor.mjs (the prometheus-operator CRD schema, npm). A
        kind with no schema is an error, not a warning.

    python kubernetes.py policy RENDERED SERVICEMONITOR OUTDIR
        What the schemas cannot see, on the kustomize output: one replica and
        Recreate, the hardening, probes, resources, scrape annotations, every
        name a manifest refers to (ConfigMaps, PVC, ports, labels), and the
        config's ports and paths against the Deployment's. Writes the
        rendered ConfigMaps' files into OUTDIR/config and OUTDIR/rules for
        `taphook check`, and prints the Deployment's TAPHOOK_UPSTREAM.

Exits 1 with one line per problem.
"""

import json
import os
import subprocess
import sys
import tempfile

import yaml
from kubernetes_validate import utils as kv

# Oldest and newest Kubernetes the manifests are checked against.
K8S_VERSIONS = ["1.28.0", "1.37.0"]
HERE = os.path.dirname(os.path.abspath(__file__))


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name(d):
    return f"{d.get('kind', '?').lower()}/{(d.get('metadata') or {}).get('name', '?')}"


def schema(files, crd_node):
    problems, crds = [], []
    for path in files:
        for d in docs(path):
            if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
                problems.append(f"{path}: a document without apiVersion and kind")
                continue
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                crds.append(d)
                continue
            for version in K8S_VERSIONS:
                try:
                    kv.validate(d, version, strict=True)
                except kv.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    problems.append(f"{path}: {name(d)} (Kubernetes {e.version}): {where}: {e.message}")
                    break
                except kv.SchemaNotFoundError as e:
                    problems.append(f"{path}: {name(d)}: no schema: {e.message}")
                    break
                except Exception as e:  # never a traceback: a problem line
                    problems.append(f"{path}: {name(d)}: cannot validate: {type(e).__name__}: {e}")
                    break
            else:
                print(f"ok    {path}: {name(d)} (Kubernetes {', '.join(v[:4] for v in K8S_VERSIONS)}, strict)")
    if crds:
        if not crd_node:
            problems.append("monitoring.coreos.com documents found but no --crd-node given")
        else:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(crds, f)
            try:
                r = subprocess.run(["node", os.path.join(HERE, "servicemonitor.mjs"), crd_node, f.name])
            finally:
                os.unlink(f.name)
            if r.returncode != 0:
                problems.append("the prometheus-operator CRD schema check failed (above)")
    return problems


def policy(rendered, servicemonitor, outdir):
    problems = []
    p = problems.append
    all_docs = docs(rendered)
    by_kind = {}
    for d in all_docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    deps = by_kind.get("Deployment", {})
    if list(deps) != ["taphook"]:
        return [f"expected one Deployment named taphook, found {sorted(deps)}"]
    dep = deps["taphook"]
    spec = dep["spec"]
    if spec.get("replicas") != 1:
        p(f"deployment/taphook: replicas must be 1 (the store's volume is ReadWriteOnce), is {spec.get('replicas')}")
    if (spec.get("strategy") or {}).get("type") != "Recreate":
        p("deployment/taphook: strategy.type must be Recreate (two pods must never share the store)")
    tpl = spec["template"]
    pod = tpl["spec"]
    labels = tpl["metadata"].get("labels") or {}
    if not all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()):
        p("deployment/taphook: selector does not match the pod template's labels")
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        p("pod securityContext: runAsNonRoot must be true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p("pod securityContext: seccompProfile.type must be RuntimeDefault")
    if not isinstance(psc.get("runAsUser"), int) or psc.get("runAsUser") == 0:
        p("pod securityContext: runAsUser must be a non-zero uid (the image's is 65532)")
    containers = {c["name"]: c for c in pod["containers"]}
    c = containers.get("taphook")
    if not c:
        return problems + ["deployment/taphook: no container named taphook"]
    csc = c.get("securityContext") or {}
    if csc.get("readOnlyRootFilesystem") is not True:
        p("container securityContext: readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        p("container securityContext: allowPrivilegeEscalation must be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        p("container securityContext: capabilities.drop must hold ALL")
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                p(f"container resources: {kind}.{r} is not set")
    ports = {cp["name"]: cp["containerPort"] for cp in c.get("ports") or [] if "name" in cp}
    if set(ports) != {"proxy", "admin"}:
        p(f"container ports: expected proxy and admin, found {sorted(ports)}")

    def probe(kind, path):
        g = (c.get(kind) or {}).get("httpGet") or {}
        if g.get("path") != path or g.get("port") not in ("admin", ports.get("admin")):
            p(f"container {kind}: must be httpGet {path} on the admin port, is {g or None}")

    probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")
    ann = tpl["metadata"].get("annotations") or {}
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/path") != "/metrics" \
            or ann.get("prometheus.io/port") != str(ports.get("admin")):
        p(f"pod annotations: prometheus.io/scrape \"true\", path /metrics and port {ports.get('admin')} expected, found {ann}")

    # Volumes and what they refer to.
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
    for m in mounts:
        if m not in volumes:
            p(f"container volumeMounts: {m} is not a volume")
    cms = by_kind.get("ConfigMap", {})
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in cms:
            p(f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not in the output")
        pvc = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if pvc:
            claim = by_kind.get("PersistentVolumeClaim", {}).get(pvc)
            if not claim:
                p(f"volume {v['name']}: PersistentVolumeClaim {pvc} is not in the output")
            elif claim["spec"].get("accessModes") != ["ReadWriteOnce"]:
                p(f"persistentvolumeclaim/{pvc}: accessModes must be [ReadWriteOnce]")
    for e in c.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] != "taphook-admin":
            p(f"env {e['name']}: Secret {ref['name']} is not the documented taphook-admin")

    # Services: selectors and target ports.
    services = by_kind.get("Service", {})
    for want in ("taphook", "taphook-admin"):
        if want not in services:
            p(f"service/{want} is missing")
    for s in services.values():
        sel = s["spec"].get("selector") or {}
        if not sel or not all(labels.get(k) == v for k, v in sel.items()):
            p(f"service/{s['metadata']['name']}: selector {sel} does not select the taphook pod")
        for sp in s["spec"]["ports"]:
            if sp.get("targetPort") not in ports and sp.get("targetPort") not in ports.values():
                p(f"service/{s['metadata']['name']}: targetPort {sp.get('targetPort')} is not a container port")

    # The ServiceMonitor selects the admin Service and names its port.
    for sm in docs(servicemonitor):
        sel = sm["spec"]["selector"].get("matchLabels") or {}
        hits = [s for s in services.values()
                if all((s["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]
        if [s["metadata"]["name"] for s in hits] != ["taphook-admin"]:
            p(f"servicemonitor/{sm['metadata']['name']}: selects {[s['metadata']['name'] for s in hits]}, not service/taphook-admin alone")
        for ep in sm["spec"]["endpoints"]:
            if hits and ep.get("port") not in [sp.get("name") for sp in hits[0]["spec"]["ports"]]:
                p(f"servicemonitor/{sm['metadata']['name']}: endpoint port {ep.get('port')} is not a port name of service/taphook-admin")

    # The config against the Deployment: ports, mounts, paths.
    cfg_volume = volumes.get((mounts.get("config") or {}).get("name", "config"))
    cfg_map = cms.get(((cfg_volume or {}).get("configMap") or {}).get("name"), {})
    cfg_text = (cfg_map.get("data") or {}).get("taphook.yaml")
    if cfg_text is None:
        return problems + ["the config ConfigMap has no taphook.yaml"]
    config = yaml.safe_load(cfg_text)
    args = c.get("args") or []
    cfg_path = args[args.index("--config") + 1] if "--config" in args else None
    mount_at = {m["name"]: m["mountPath"] for m in mounts.values()}
    if cfg_path != mount_at.get("config"):
        p(f"container args: --config {cfg_path} is not where the config is mounted ({mount_at.get('config')})")
    for key, port in (("listen", "proxy"), ("admin_listen", "admin")):
        if not str(config.get(key, "")).endswith(f":{ports.get(port)}"):
            p(f"config {key}: {config.get(key)} is not on the {port} containerPort {ports.get(port)}")
        if not str(config.get(key, "")).startswith("0.0.0.0:"):
            p(f"config {key}: {config.get(key)} must listen on 0.0.0.0 to be reachable in the pod")
    for key, vol in (("rules_dir", "rules"), ("data_dir", "data")):
        if config.get(key) != mount_at.get(vol):
            p(f"config {key}: {config.get(key)} is not where volume {vol} is mounted ({mount_at.get(vol)})")
    env = {e["name"] for e in c.get("env") or []}
    for var in ("TAPHOOK_UPSTREAM", "TAPHOOK_ADMIN_TOKEN"):
        if "${" + var + "}" in cfg_text and var not in env:
            p(f"config uses ${{{var}}} but the container's env does not set it")

    # The files `taphook check` reads, as the pod sees them, with the
    # config's absolute paths moved into OUTDIR.
    rules_map = cms.get(((volumes.get("rules") or {}).get("configMap") or {}).get("name"), {})
    os.makedirs(os.path.join(outdir, "rules"), exist_ok=True)
    os.makedirs(os.path.join(outdir, "data"), exist_ok=True)
    for fname, text in (rules_map.get("data") or {}).items():
        with open(os.path.join(outdir, "rules", fname), "w") as f:
            f.write(text)
    text = cfg_text.replace(str(config.get("rules_dir")), os.path.join(outdir, "rules"))
    text = text.replace(str(config.get("data_dir")), os.path.join(outdir, "data"))
    with open(os.path.join(outdir, "taphook.yaml"), "w") as f:
        f.write(text)
    upstream = next((e.get("value") for e in c.get("env") or [] if e["name"] == "TAPHOOK_UPSTREAM"), "")
    with open(os.path.join(outdir, "upstream"), "w") as f:
        f.write(upstream or "")
    if not problems:
        print(f"ok    {rendered}: replicas 1, Recreate, hardening, probes, resources, scrape annotations, references, config vs Deployment")
    return problems


def main(argv):
    if len(argv) >= 2 and argv[0] == "schema":
        crd_node = None
        if argv[1] == "--crd-node":
            crd_node, argv = argv[2], argv[2:]
        problems = schema(argv[1:], crd_node)
    elif len(argv) == 4 and argv[0] == "policy":
        problems = policy(*argv[1:])
    else:
        print(__doc__)
        return 2
    for pr in problems:
        print(f"ERROR {pr}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
