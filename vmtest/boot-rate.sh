#!/usr/bin/env bash
# Boots the test VM N times (default 50) with one trivial command and no retry, while the host is
# kept busy (one spinning process per host CPU, unless --idle), and counts how the boots end:
# ran the command, hung before it, or the guest kernel crashed. The CI runs its VM suites with a
# retry as a last resort; this measures how often that retry is needed.
#
#   bash vmtest/boot-rate.sh [--boots N] [--cpus N] [--idle]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
boots=50 cpus=2 load=1
while [ $# -gt 0 ]; do
    case $1 in
        --boots) boots=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --idle) load=0; shift ;;
        *) echo "boot-rate.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

spinners=()
stop() { for p in "${spinners[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop EXIT
if [ $load = 1 ]; then
    for _ in $(seq "$(nproc)"); do sh -c 'while :; do :; done' & spinners+=($!); done
fi

ok=0 hung=0 crashed=0 other=0 times=()
cache=${STRATA_VMTEST_CACHE:-$here/../.cache/vmtest}
for i in $(seq "$boots"); do
    start=$(date +%s.%N)
    log=$(mktemp)
    if bash "$here/run.sh" --quiet --retries 1 --cpus "$cpus" --mem 512 -- true >"$log" 2>&1; then
        ok=$((ok + 1))
        times+=("$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')")
    elif grep -q "kernel crashed" "$log"; then
        crashed=$((crashed + 1)); cp "$cache/last-crash.log" "$cache/boot-rate-crash-$i.log" 2>/dev/null || true
    elif grep -q "hung or died\|no VMTEST-BOOTED" "$log"; then
        hung=$((hung + 1))
    else
        other=$((other + 1)); tail -3 "$log"
    fi
    rm -f "$log"
    printf 'boot %d/%d: %d ran, %d hung, %d crashed, %d other\n' "$i" "$boots" "$ok" "$hung" "$crashed" "$other"
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
slowest=$(echo "$sorted" | tail -1)
echo "boot-rate: $boots boots, $cpus vCPU, TCG, host $( [ $load = 1 ] && echo "loaded ($(nproc) spinners)" || echo idle): $ok ran the command, $hung hung, $crashed crashed, $other other; median ${median}s, slowest ${slowest}s per boot (run.sh, no retry)"
[ $((hung + crashed + other)) -eq 0 ]
