#!/bin/sh
# Builds a one-layer OCI image archive of busybox-static for `ctr images import`.
# usage: make-image.sh OUT.tar REF [NOTE [FILES]]   (REF like docker.io/library/strata-busybox:test)
# NOTE, if not empty, goes into /etc/rebuilt: the same files in a layer of another digest (a
# rebuilt base). FILES adds that many files of 16 KiB of random bytes under /data (a layer that
# takes a while to unpack). $MTIME (seconds, default 0) is every file's mtime: the same files
# with another one are a rebuild that touched them all. Bad images: $DIFF_ID replaces the
# config's diff ID; $ESCAPE (a directory outside) makes the layer end with a symlink `escape`
# to it and then a file `escape/pwned` written through it.
set -eu
out=$1
ref=$2
note=${3:-}
files=${4:-0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/rootfs/proc" "$work/rootfs/sys" \
    "$work/rootfs/dev" "$work/blobs/sha256"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh echo cat sleep true false ls ps id env printf grep kill; do
    ln -s busybox "$work/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"
[ -z "$note" ] || echo "$note" > "$work/rootfs/etc/rebuilt"
if [ "$files" -gt 0 ]; then
    mkdir "$work/rootfs/data"
    head -c $((files * 16384)) /dev/urandom | split -a 5 -b 16384 - "$work/rootfs/data/f"
fi
tar --sort=name --mtime=@"${MTIME:-0}" --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
if [ -n "${ESCAPE:-}" ]; then
    mkdir -p "$work/link" "$work/through/escape"
    ln -s "$ESCAPE" "$work/link/escape"
    echo pwned > "$work/through/escape/pwned"
    tar --owner=0 --group=0 --numeric-owner -C "$work/link" -rf "$work/layer.tar" escape
    tar --owner=0 --group=0 --numeric-owner -C "$work/through" -rf "$work/layer.tar" escape/pwned
fi
blob() { # file media-type -> descriptor JSON, and the blob stored by digest
    d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$work/blobs/sha256/$d"
    printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$d" "$(stat -c %s "$1")"
}
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
diff_id=${DIFF_ID:-$(sha256sum "$work/layer.tar" | cut -d' ' -f1)}
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff_id" > "$work/config.json"
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config" "$layer" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
manifest=${manifest%\}}
printf '{"schemaVersion":2,"manifests":[%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"test"}}]}' \
    "$manifest" "$ref" > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
tar -C "$work" -cf "$out" oci-layout index.json blobs
