#!/bin/sh
# Fetches Debian packages of another suite without touching the machine's apt state: a private
# sources list, lists and cache under .cache/debian/, verified by apt against the archive's
# signed indexes like any install.
#
#   debian-fetch.sh deb SUITE PACKAGE...   extracts the binary packages (dpkg-deb -x) into one
#                                          tree; prints its directory
#   debian-fetch.sh source SUITE PACKAGE [REGEX]
#                                          downloads the files of the source package whose names
#                                          match REGEX (default: all), each checked against the
#                                          SHA-256 of the signed Sources index; prints the
#                                          directory holding them
#
# A tree already fetched is reused (delete .cache/debian/SUITE to refetch).
set -eu
mode=$1 suite=$2
shift 2
top=$(cd "$(dirname "$0")/.." && pwd)
key=$(echo "$mode $*" | tr -c 'A-Za-z0-9.+\n-' '_')
out="$top/.cache/debian/$suite/$key"
if [ -f "$out/.complete" ]; then
    echo "$out"
    exit 0
fi
apt="$top/.cache/debian/$suite/apt"
rm -rf "$out"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$out/files"
# The machine's own Debian mirror, as its apt configuration names it (the first URI of a
# non-security source), with the other suite.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -v '^[[:space:]]*#' | grep -oE '(https?|file)://[^ ]+' | grep -v -- '-security' | head -1)
[ -n "$mirror" ] || { echo "debian-fetch: no Debian mirror found in /etc/apt" >&2; exit 1; }
cat > "$apt/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main
LIST
opts="-o Dir::Etc::SourceList=$apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$apt/lists -o Dir::Cache=$apt/cache -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root"
# shellcheck disable=SC2086
apt-get $opts update -qq >&2
case $mode in
deb)
    for pkg in "$@"; do
        # shellcheck disable=SC2086
        (cd "$out/files" && apt-get $opts download "$pkg/$suite" >&2)
    done
    for deb in "$out"/files/*.deb; do
        dpkg-deb -x "$deb" "$out/root"
    done
    ;;
source)
    [ $# -ge 1 ] && [ $# -le 2 ] || { echo "debian-fetch: source takes a package and a file regex" >&2; exit 2; }
    # shellcheck disable=SC2086
    apt-get $opts source --print-uris "$1/$suite" 2>/dev/null | grep "^'" | while read -r uri file _size hash; do
        echo "$file" | grep -Eq -- "${2:-.}" || continue
        /usr/lib/apt/apt-helper $opts download-file "$(echo "$uri" | tr -d "'")" "$out/files/$file" "$hash" >&2
    done
    ls "$out/files" | grep -q . || { echo "debian-fetch: no file of source package $1 matches ${2:-.}" >&2; exit 1; }
    ;;
*)
    echo "usage: debian-fetch.sh deb|source SUITE PACKAGE..." >&2
    exit 2
    ;;
esac
touch "$out/.complete"
echo "$out"
