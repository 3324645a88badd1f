#!/usr/bin/env bash
# Builds the kubelet of Kubernetes $KUBERNETES_VERSION into $MINE_CACHE/kubelet-$KUBERNETES_VERSION/bin
# for the kubelet tests (test/kubelet), when it is not there yet.
#
# `go install k8s.io/kubernetes/cmd/kubelet@...` refuses: the k8s.io/kubernetes
# module replaces its staging modules (k8s.io/api, k8s.io/client-go, ...) with
# directories (./staging/src/k8s.io/X) that its module archive does not hold.
# So: `go mod download` the module, copy it to a writable directory, drop its
# go.work, replace each staging replace with a requirement on the published
# k8s.io/X of the matching v0.MINOR.PATCH, and `go build ./cmd/kubelet` there.
#
# Idempotent and quiet: when the binary is there it does nothing. Progress goes
# to stderr; stdout gets one line, the directory of the kubelet binary, so that
#
#   export MINE_KUBELET_BIN=$(hack/install-kubelet.sh)
#
# Build time measured on 2 busy cores (other builds running): see
# docs/kubernetes.md.
#
# Environment:
#   MINE_CACHE          cache directory (default ~/.cache/mine)
#   KUBERNETES_VERSION  Kubernetes release (default v1.35.4)
set -euo pipefail

KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.35.4}
MINE_CACHE=${MINE_CACHE:-$HOME/.cache/mine}
dir=$MINE_CACHE/kubelet-$KUBERNETES_VERSION/bin
stamp=$dir/.kubernetes-version

log() { echo "install-kubelet: $*" >&2; }
die() { log "$*"; exit 1; }

if [ -x "$dir/kubelet" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KUBERNETES_VERSION" ]; then
	echo "$dir"
	exit 0
fi

command -v go >/dev/null 2>&1 || die "no go in PATH to build kubelet $KUBERNETES_VERSION"
case $KUBERNETES_VERSION in
v1.*.*) staging=v0.${KUBERNETES_VERSION#v1.} ;;
*) die "KUBERNETES_VERSION must be v1.MINOR.PATCH, not $KUBERNETES_VERSION" ;;
esac

log "building kubelet $KUBERNETES_VERSION (staging modules $staging) into $dir"
start=$(date +%s)
moddir=$(cd / && GOFLAGS='' go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$moddir" ] || die "go mod download k8s.io/kubernetes@$KUBERNETES_VERSION: no module directory"

src=$(mktemp -d "${TMPDIR:-/tmp}/kubernetes-$KUBERNETES_VERSION.XXXXXX")
trap 'rm -rf "$src"' EXIT
cp -R "$moddir/." "$src/"
chmod -R u+w "$src"
cd "$src"
rm -f go.work go.work.sum

# Every `k8s.io/X => ./staging/src/k8s.io/X` becomes a requirement on k8s.io/X@$staging.
edits=()
while read -r mod; do
	edits+=("-dropreplace=$mod" "-require=$mod@$staging")
done < <(sed -n 's/^[[:space:]]*\(replace[[:space:]]\+\)\{0,1\}\(k8s\.io\/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\.\/staging\/.*/\2/p' go.mod)
[ ${#edits[@]} -gt 0 ] || die "no staging replace directives found in k8s.io/kubernetes@$KUBERNETES_VERSION"
GOWORK=off go mod edit "${edits[@]}"
if grep -q '=> ./staging' go.mod; then
	die "staging replace directives left in go.mod"
fi

export GOWORK=off GOFLAGS=-mod=mod
go mod download >&2
mkdir -p "$dir"
# CGO off: kubelet builds without it, and a static binary does not depend on
# the libc of the machine that built it.
CGO_ENABLED=0 go build -trimpath -o "$dir/kubelet" ./cmd/kubelet >&2
echo "$KUBERNETES_VERSION" >"$stamp"
log "kubelet $KUBERNETES_VERSION built in $(($(date +%s) - start)) s"
echo "$dir"
