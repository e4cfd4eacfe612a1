#!/bin/sh
# Fetches Debian's containerd package of SUITE (trixie: 1.7.x, forky: 2.1.x) with
# .ci/debian-fetch.sh (nothing installed, the machine's apt state untouched). Prints the
# directory holding containerd and ctr.
# usage: fetch-containerd.sh SUITE
set -eu
top=$(cd "$(dirname "$0")/../../.." && pwd)
dir=$(sh "$top/.ci/debian-fetch.sh" deb "$1" containerd)
"$dir/root/usr/bin/containerd" --version >&2
echo "$dir/root/usr/bin"
