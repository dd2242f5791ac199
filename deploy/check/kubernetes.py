"""Offline checks of taphook's Kubernetes manifests (run by deploy/check.sh).

    python kubernetes.py schema [--crd-node PREFIX] FILE...
        Every document against the Kubernetes OpenAPI schemas bundled in the
        PyPI package kubernetes-validate, strict (unknown fields are errors),
        for each version in K8S_VERSIONS. monitoring.coreos.com documents go
        to servicemonitor.mjs (the prometheus-operator CRD schema, npm). A
        kind with no schema is an error, not a warning.

    python kubernetes.py policy [--variant embedded|jetstream] RENDERED SERVICEMONITOR OUTDIR
        What the schemas cannot see, on the kustomize output: the hardening,
        probes, resources, scrape annotations, every name a manifest refers
        to (ConfigMaps, PVC, ports, labels), and the config's ports and paths
        against the Deployment's. Per variant: embedded (deploy/kubernetes,
        the default) one replica, Recreate, the store on a ReadWriteOnce
        PVC; jetstream (deploy/kubernetes/jetstream) two replicas or more,
        RollingUpdate that never goes below them, no PVC (data_dir an
        emptyDir), a PodDisruptionBudget selecting the pods that still lets
        one go, a spread across nodes, and `store.backend: jetstream` with a
        nats:// URL in the config. Writes the rendered ConfigMaps' files into
        OUTDIR/config and OUTDIR/rules for `taphook check`, and the
        Deployment's TAPHOOK_UPSTREAM into OUTDIR/upstream.

    python kubernetes.py drift BASE_RENDERED VARIANT_RENDERED
        The jetstream variant's Deployment against the base's: equal but for
        replicas, strategy, topologySpreadConstraints/affinity, the data
        volume and the config ConfigMap's generated name; its Services equal.

Exits 1 with one line per problem.
"""

import copy
import json
import os
import subprocess
import sys
import tempfile

import yaml

# Oldest and newest Kubernetes the manifests are checked against.
K8S_VERSIONS = ["1.28.0", "1.37.0"]
HERE = os.path.dirname(os.path.abspath(__file__))


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name(d):
    return f"{d.get('kind', '?').lower()}/{(d.get('metadata') or {}).get('name', '?')}"


def schema(files, crd_node):
    from kubernetes_validate import utils as kv  # slow to import: only here
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


def by_kind_of(all_docs):
    by_kind = {}
    for d in all_docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return by_kind


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels; matchExpressions In, NotIn,
    Exists, DoesNotExist) selects a pod with these labels. An empty selector
    selects nothing here: in a PDB it would select every pod of the
    namespace, which is never what is meant."""
    selector = selector or {}
    ml, me = selector.get("matchLabels") or {}, selector.get("matchExpressions") or []
    if not ml and not me:
        return False
    if not all(labels.get(k) == v for k, v in ml.items()):
        return False
    for e in me:
        k, op, vals = e.get("key"), e.get("operator"), e.get("values") or []
        if (op == "In" and labels.get(k) not in vals) or (op == "NotIn" and labels.get(k) in vals) \
                or (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels):
            return False
    return True


def variant_embedded(spec, volumes, by_kind, config, p):
    if spec.get("replicas") != 1:
        p(f"deployment/taphook: replicas must be 1 (the store's volume is ReadWriteOnce), is {spec.get('replicas')}")
    if (spec.get("strategy") or {}).get("type") != "Recreate":
        p("deployment/taphook: strategy.type must be Recreate (two pods must never share the store)")
    if "persistentVolumeClaim" not in (volumes.get("data") or {}):
        p("volume data: must be the PersistentVolumeClaim (the embedded store lives in data_dir)")
    backend = ((config or {}).get("store") or {}).get("backend", "embedded")
    if backend != "embedded":
        p(f"config store.backend: {backend}: this layout (one replica, a PVC) is for the embedded store; "
          "several replicas on NATS are deploy/kubernetes/jetstream")
    return "replicas 1, Recreate, the store on the PVC"


def variant_jetstream(spec, volumes, by_kind, config, p):
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels") or {}
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 2:
        p(f"deployment/taphook: replicas must be 2 or more (the point of the jetstream store), is {replicas}")
        replicas = 2
    strategy = spec.get("strategy") or {}
    if strategy.get("type") != "RollingUpdate":
        p(f"deployment/taphook: strategy.type must be RollingUpdate (replicas share NATS, not a volume; "
          f"Recreate stops them all), is {strategy.get('type')}")
    elif str((strategy.get("rollingUpdate") or {}).get("maxUnavailable")) not in ("0", "0%"):
        p("deployment/taphook: strategy.rollingUpdate.maxUnavailable must be 0 "
          "(a rollout never takes a replica away before its successor is ready)")
    for name in by_kind.get("PersistentVolumeClaim", {}):
        p(f"persistentvolumeclaim/{name}: no PVC in the jetstream variant "
          "(shared state is in NATS; data_dir is an emptyDir, and a ReadWriteOnce claim would pin the replicas to one node)")
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            p(f"volume {v['name']}: a PersistentVolumeClaim ({v['persistentVolumeClaim'].get('claimName')}) "
              "in the jetstream variant: data_dir must be an emptyDir")
    if "emptyDir" not in (volumes.get("data") or {}):
        p("volume data: must be an emptyDir (data_dir holds only this replica's funnel metrics)")

    # A PodDisruptionBudget that selects the pods and lets one go.
    pdbs = [d for d in by_kind.get("PodDisruptionBudget", {}).values()
            if selects(d["spec"].get("selector"), labels)]
    if not pdbs:
        found = sorted(by_kind.get("PodDisruptionBudget", {}))
        p(f"no PodDisruptionBudget selects the taphook pods (labels {labels}); found {found or 'none'}")
    for d in pdbs:
        s = d["spec"]
        n = d["metadata"]["name"]
        if "minAvailable" in s:
            m = s["minAvailable"]
            if not isinstance(m, int) or m < 1:
                p(f"poddisruptionbudget/{n}: minAvailable must be a number of pods, at least 1, is {m!r}")
            elif m >= replicas:
                p(f"poddisruptionbudget/{n}: minAvailable {m} with {replicas} replicas blocks every node drain; "
                  f"at most {replicas - 1}")
        elif "maxUnavailable" in s:
            if s["maxUnavailable"] in (0, "0", "0%"):
                p(f"poddisruptionbudget/{n}: maxUnavailable 0 blocks every node drain")
        else:
            p(f"poddisruptionbudget/{n}: neither minAvailable nor maxUnavailable")

    # Spread over nodes: a hard topology spread on the hostname, or a pod
    # anti-affinity on it, selecting the pods.
    host = "kubernetes.io/hostname"
    spread = [c for c in pod.get("topologySpreadConstraints") or []
              if c.get("topologyKey") == host and selects(c.get("labelSelector"), labels)]
    anti = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
    anti_terms = list(anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []) + \
        [t.get("podAffinityTerm") or {} for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
    anti_hits = [t for t in anti_terms if t.get("topologyKey") == host and selects(t.get("labelSelector"), labels)]
    if not spread and not anti_hits:
        p(f"deployment/taphook: no topologySpreadConstraints or podAntiAffinity on {host} selecting the pods "
          "(the replicas could all land on one node)")

    store = (config or {}).get("store") or {}
    backend = store.get("backend", "embedded")
    if backend != "jetstream":
        p(f"config store.backend: must be jetstream with several replicas, is {backend} "
          f"(each replica would have a store of its own and deliver every event it sees)")
    else:
        urls = [u.strip() for u in str(store.get("url") or "").split(",") if u.strip()]
        if not urls or not all(u.startswith(("nats://", "tls://")) for u in urls):
            p(f"config store.url: nats:// URL(s) expected, is {store.get('url')!r}")
    return f"replicas {spec.get('replicas')}, RollingUpdate (maxUnavailable 0), no PVC, PodDisruptionBudget, spread over nodes, store jetstream"


VARIANTS = {"embedded": variant_embedded, "jetstream": variant_jetstream}


def policy(rendered, servicemonitor, outdir, variant="embedded"):
    problems = []
    p = problems.append
    all_docs = docs(rendered)
    by_kind = by_kind_of(all_docs)
    deps = by_kind.get("Deployment", {})
    if list(deps) != ["taphook"]:
        return [f"expected one Deployment named taphook, found {sorted(deps)}"]
    dep = deps["taphook"]
    spec = dep["spec"]
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
    summary = VARIANTS[variant](spec, volumes, by_kind, config, p)
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
    for var in ("TAPHOOK_UPSTREAM", "TAPHOOK_ADMIN_TOKEN", "TAPHOOK_SESSION_SECRET"):
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
        print(f"ok    {rendered}: {summary}, hardening, probes, resources, scrape annotations, references, config vs Deployment")
    return problems


def drift(base_rendered, variant_rendered):
    """The variant's Deployment and Services against the base's, apart from
    what the variant is for."""
    problems = []
    base, var = by_kind_of(docs(base_rendered)), by_kind_of(docs(variant_rendered))

    def pod_of(by_kind):
        dep = copy.deepcopy((by_kind.get("Deployment") or {}).get("taphook") or {})
        spec = dep.get("spec") or {}
        for key in ("replicas", "strategy"):
            spec.pop(key, None)
        pod = ((spec.get("template") or {}).get("spec")) or {}
        for key in ("topologySpreadConstraints", "affinity"):
            pod.pop(key, None)
        for v in pod.get("volumes") or []:
            if v.get("name") == "data":
                v.clear()
                v["name"] = "data"
            elif v.get("name") == "config":
                v["configMap"]["name"] = "taphook-config-<hash>"
        return dep

    def diff(a, b, where=""):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                yield from diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{where}.{k}" if where else k)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                yield from diff(x, y, f"{where}.{i}")
        elif a != b:
            yield f"{where}: base {json.dumps(a)[:80]}, jetstream {json.dumps(b)[:80]}"

    for d in diff(pod_of(base), pod_of(var)):
        problems.append(f"deployment/taphook differs from the base's (only replicas, strategy, spread and the data volume may): {d}")
    for name in sorted(set(base.get("Service", {})) | set(var.get("Service", {}))):
        for d in diff(base.get("Service", {}).get(name, {}), var.get("Service", {}).get(name, {})):
            problems.append(f"service/{name} differs from the base's: {d}")
    if not problems:
        print(f"ok    {variant_rendered}: Deployment and Services as the base's, but for replicas, strategy, spread and the data volume")
    return problems


def main(argv):
    if len(argv) >= 2 and argv[0] == "schema":
        crd_node = None
        if argv[1] == "--crd-node":
            crd_node, argv = argv[2], argv[2:]
        problems = schema(argv[1:], crd_node)
    elif argv and argv[0] == "policy" and len(argv) == 6 and argv[1] == "--variant" and argv[2] in VARIANTS:
        problems = policy(*argv[3:], variant=argv[2])
    elif len(argv) == 4 and argv[0] == "policy":
        problems = policy(*argv[1:])
    elif len(argv) == 3 and argv[0] == "drift":
        problems = drift(*argv[1:])
    else:
        print(__doc__)
        return 2
    for pr in problems:
        print(f"ERROR {pr}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
