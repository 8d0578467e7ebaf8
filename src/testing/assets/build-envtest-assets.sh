#!/usr/bin/env bash
# Build a real kube-apiserver v1.20.2 from Debian bookworm's `kubernetes` source package with Debian
# bullseye's Go 1.15 (the toolchain upstream used for 1.20), and take etcd 3.4.23 from bookworm's
# etcd-server package. Only the Debian mirror configured in this machine's apt sources is used;
# no host name is written here. Every download is checked against a pinned SHA-256.
#
# Usage: build-envtest-assets.sh <assets-dir>
set -euo pipefail

out_arg=${1:?usage: build-envtest-assets.sh <assets-dir>}
log() { printf '[envtest] %s\n' "$*" >&2; }

for tool in curl make tar dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool (install it with apt-get)"; exit 3; }
done

# The Debian mirror as this machine's apt knows it (never hard-coded).
mirror=""
if command -v apt-get >/dev/null; then
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -v -- '-security' | head -n1 || true)
fi
if [[ -z "$mirror" ]]; then
  mirror=$( { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
              grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } \
            | grep -v -- '-security' | head -n1 || true)
fi
if [[ -z "$mirror" ]]; then
  log "no Debian mirror found in the apt configuration (is this a Debian machine with apt?)"
  exit 3
fi
mirror=${mirror%/}
log "using the Debian mirror from the apt configuration"

mkdir -p "$out_arg"
out=$(cd "$out_arg" && pwd)
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

fetch() {
  local path=$1 sum=$2 file
  file="$work/$(basename "$path")"
  log "downloading $(basename "$path")"
  curl -fsSL --retry 3 -o "$file" "$mirror/pool/main/$path"
  echo "$sum  $file" | sha256sum -c --quiet
}

fetch k/kubernetes/kubernetes_1.20.5+really1.20.2.orig.tar.gz b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
fetch g/golang-1.15/golang-1.15-go_1.15.15-1~deb11u4_amd64.deb 33f6680406698b60370322aa5710be199006b3d66fbb0974b44da012de3aa82a
fetch g/golang-1.15/golang-1.15-src_1.15.15-1~deb11u4_amd64.deb e580f570f706d801191f9a17e55156736fc5979a6a878bab9304ca007ae29941
fetch e/etcd/etcd-server_3.4.23-4+b4_amd64.deb 3a9445d4560ad6de1c375756b2a17d97713df44cbd20a658c871fe108af7ef5d

log "unpacking"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
tar xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"

# The 1.20 build script only uses `rsync -pc src dst` to copy its result.
mkdir -p "$work/shim"
printf '#!/bin/sh\nshift; exec cp -p "$@"\n' >"$work/shim/rsync"
chmod +x "$work/shim/rsync"

export GOROOT="$work/root/usr/lib/go-1.15" GOPATH="$work/gopath" GOCACHE="$work/gocache" \
  PATH="$work/shim:$work/root/usr/lib/go-1.15/bin:$PATH" GOPROXY=off GOFLAGS= CGO_ENABLED=0 \
  KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56

cd "$work/kubernetes-1.20.2"
log "generating OpenAPI definitions (about 1 minute)"
make gen_openapi >/dev/null
log "building kube-apiserver (about 3 minutes on 2 cores)"
hack/make-rules/build.sh cmd/kube-apiserver >/dev/null

install -m 0755 _output/bin/kube-apiserver "$out/kube-apiserver.partial"
install -m 0755 "$work/root/usr/bin/etcd" "$out/etcd.partial"
"$out/kube-apiserver.partial" --version >&2
"$out/etcd.partial" --version | head -n1 >&2
mv "$out/etcd.partial" "$out/etcd"
mv "$out/kube-apiserver.partial" "$out/kube-apiserver"
log "assets ready in $out"
