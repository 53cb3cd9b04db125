#!/usr/bin/env bash
# Offline checks of the operator's deployable artefacts (no cluster, no helm needed):
#   1. the committed CRD equals the one generated from the Rust types;
#   2. the CRD and the objects the operator builds validate against the Kubernetes
#      schemas (kubernetes-validate --strict);
#   3. the example ImCluster validates against the CRD's own schema;
#   4. values.yaml validates against values.schema.json;
#   5. the alert rules pass `promtool check rules` and their unit tests
#      (`promtool test rules scripts/alerts-test.yaml`);
#   6. the Grafana dashboard is valid JSON and queries the contract metric names.
# Exits non-zero on the first failure. Installs kubernetes-validate (pip) and prometheus
# (apt, for promtool) when missing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
chart=charts/im-operator
k8s_version=${K8S_VERSION:-1.33.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "tools"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet kubernetes-validate
fi
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "promtool missing: install the Debian package 'prometheus'" >&2
    exit 1
  fi
fi
command -v kubernetes-validate promtool

step "CRD is current"
cargo run --quiet -p im-crds --bin crdgen -- "$work/crd.yaml"
diff -u "$chart/crds/imcluster.yaml" "$work/crd.yaml"
echo "ok: $chart/crds/imcluster.yaml"

step "built objects"
cargo run --quiet -p im-operator --bin im-operator-dump -- "$work/sample" >/dev/null
cargo run --quiet -p im-operator --bin im-operator-dump -- "$work/example" "$chart/examples/imcluster.yaml" >/dev/null
ls "$work/sample" "$work/example" | grep -c yaml

step "kubernetes-validate (Kubernetes $k8s_version, strict)"
kubernetes-validate --strict --quiet -k "$k8s_version" \
  "$chart/crds/imcluster.yaml" "$work"/sample/*.yaml "$work"/example/*.yaml
echo "ok"

step "example ImCluster against the CRD schema, values against values.schema.json"
python3 - "$chart" <<'PY'
import json, sys, yaml, jsonschema

chart = sys.argv[1]

def strip(node):
    """Drop Kubernetes-only keywords that jsonschema does not know."""
    if isinstance(node, dict):
        out = {k: strip(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if out.get("nullable"):
            t = out.get("type")
            if isinstance(t, str):
                out["type"] = [t, "null"]
        out.pop("nullable", None)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node

crd = yaml.safe_load(open(f"{chart}/crds/imcluster.yaml"))
schema = strip(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
example = yaml.safe_load(open(f"{chart}/examples/imcluster.yaml"))
jsonschema.validate(example, schema)
assert example["spec"]["gateway"]["replicas"]["min"] <= example["spec"]["gateway"]["replicas"]["max"]
assert example["spec"]["logic"]["replicas"]["min"] <= example["spec"]["logic"]["replicas"]["max"]
bad = json.loads(json.dumps(example))
del bad["spec"]["gateway"]["image"]
try:
    jsonschema.validate(bad, schema)
except jsonschema.ValidationError:
    pass
else:
    sys.exit("schema accepted an ImCluster without gateway.image")
print("ok: example ImCluster")

values = yaml.safe_load(open(f"{chart}/values.yaml"))
jsonschema.validate(values, json.load(open(f"{chart}/values.schema.json")))
for f in ("Chart.yaml",):
    yaml.safe_load(open(f"{chart}/{f}"))
print("ok: values.yaml, Chart.yaml")
PY

step "promtool check rules"
promtool check rules "$chart/files/alerts.yaml"

step "promtool test rules"
(cd scripts && promtool test rules alerts-test.yaml)

step "dashboard"
python3 - "$chart/files/dashboard.json" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert all(p.get("targets") for p in dash["panels"]), "a panel without queries"
for name in ("im_gateway_connections", "im_logic_messages_total",
             "im_gateway_push_latency_seconds_bucket", "im_logic_store_latency_seconds_bucket",
             "im_logic_store_busy_seconds_total", "im_logic_store_wait_seconds_bucket",
             "im_logic_push_seconds_bucket", "im_gateway_request_seconds_bucket",
             "im_operator_reconcile_total", "im_operator_desired_replicas",
             "im_operator_ready_replicas", "im_gateway_acks_total",
             "im_logic_acks_queued", "im_logic_acks_dropped_total",
             "im_logic_push_failures_total", "im_build_info"):
    assert any(name in e for e in exprs), f"dashboard does not query {name}"
print(f"ok: {len(dash['panels'])} panels, {len(exprs)} queries")
PY

printf '\nall operator checks passed\n'
