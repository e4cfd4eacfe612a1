#!/bin/sh
# Fetches Debian's containerd package of SUITE (trixie: 1.7.x, forky: 2.1.x) without touching
# the machine's apt state: a private sources list, lists and cache, `apt-get download`, then
# `dpkg-deb -x` into .cache/containerd/SUITE. Prints the directory holding containerd and ctr.
# usage: fetch-containerd.sh SUITE
set -eu
suite=$1
top=$(cd "$(dirname "$0")/../../.." && pwd)
cache="$top/.cache/containerd/$suite"
if [ -x "$cache/root/usr/bin/containerd" ]; then
    echo "$cache/root/usr/bin"
    exit 0
fi
apt="$top/.cache/containerd/apt-$suite"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$cache"
# The machine's own Debian mirror, as its apt configuration names it (the first URI of a source
# that lists bookworm), with the other suite.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -v '^[[:space:]]*#' | grep -oE '(https?|file)://[^ ]+' | grep -v -- '-security' | head -1)
[ -n "$mirror" ] || { echo "fetch-containerd: no Debian mirror found in /etc/apt" >&2; exit 1; }
cat > "$apt/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main
LIST
opts="-o Dir::Etc::SourceList=$apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$apt/lists -o Dir::Cache=$apt/cache -o APT::Get::List-Cleanup=0"
# shellcheck disable=SC2086
apt-get $opts update -qq >&2
# shellcheck disable=SC2086
(cd "$cache" && apt-get $opts download "containerd/$suite" >&2)
rm -rf "$cache/root"
dpkg-deb -x "$cache"/containerd_*.deb "$cache/root"
rm -rf "$apt"
"$cache/root/usr/bin/containerd" --version >&2
echo "$cache/root/usr/bin"
