#!/bin/sh
# Builds a one-layer OCI image archive of a root file system, for `ctr images import` (no
# registry is reachable from the test machines).
# usage: make-image.sh OUT.tar REF ROOTFS CMD_JSON
#   e.g. make-image.sh pause.tar docker.io/library/strata-pause:cri rootfs/ '["/pause"]'
set -eu
out=$1 ref=$2 rootfs=$3 cmd=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
blob() { # file media-type -> descriptor JSON, and the blob stored by digest
    d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$work/blobs/sha256/$d"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$d" "$(stat -c %s "$1")"
}
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$cmd" "$diff_id" > "$work/config.json"
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config" "$layer" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
manifest=${manifest%\}}
printf '{"schemaVersion":2,"manifests":[%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"cri"}}]}' \
    "$manifest" "$ref" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$out" oci-layout index.json blobs
