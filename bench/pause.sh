#!/usr/bin/env bash
# The pause an application sees when `ckpt migrate` moves it, by strategy: a container running
# `bench/memhog.c N pauses` (N MiB resident, half incompressible, touching 16 pages of it every
# 5 ms and printing each gap of more than 20 ms) moves between two stores on this machine, the far one
# reached through its own network namespace (a veth pair) and its own sshd there.
#   post-copy:     the far side restores at once and fetches each page the first time it is
#                  touched, through the ssh channel, while the rest follows;
#   stop-and-copy: freeze, dump, stream, restore;
#   pre-copy:      tried, and reported as refused where memory dirty tracking is missing.
# Reports per size and strategy the longest gap the application saw (median and spread over
# the rounds), ckpt's own downtime figure, and the bytes sent.
# Usage: bench/pause.sh [ROUNDS]   (SIZES="64 512 2048" STRATEGIES="post-copy stop-and-copy pre-copy")
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/lib.sh
prepare
bin="$PWD/target/release/ckpt"
work=/var/tmp/ckpt-bench-pause
src="$bin --root /var/lib/ckpt-bench-psrc --runroot /run/ckpt-bench-psrc"
dst="$bin --root /var/lib/ckpt-bench-pdst --runroot /run/ckpt-bench-pdst"
far=ckpt-bench-far
near_ip=10.213.7.1 far_ip=10.213.7.2 ssh_port=2222

cleanup() {
  [ -f "$work/sshd/pid" ] && kill "$(cat "$work/sshd/pid")" 2>/dev/null || true
  $src rm -af >/dev/null 2>&1 || true
  $dst rm -af >/dev/null 2>&1 || true
  ip link del ckptb0 2>/dev/null || true
  ip netns del "$far" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"; mkdir -p "$work/sshd"; memhog_rootfs "$work"
for store in "$src" "$dst"; do $store image import "$work/rootfs.tar" memhog >/dev/null; done

# The far side: a network namespace of its own, a veth pair to it, and an sshd inside.
ip netns add "$far"
ip link add ckptb0 type veth peer name ckptb1
ip link set ckptb1 netns "$far"
ip addr add "$near_ip/30" dev ckptb0; ip link set ckptb0 up
ip netns exec "$far" ip addr add "$far_ip/30" dev ckptb1
ip netns exec "$far" ip link set ckptb1 up
ip netns exec "$far" ip link set lo up
sshd_config "$work/sshd" "$far_ip" "$ssh_port"
# Only the network namespace: `ip netns exec` would also give sshd a /sys without cgroups.
nsenter --net="/run/netns/$far" /usr/sbin/sshd -f "$work/sshd/config" -E "$work/sshd/log"
sleep 0.5

wait_ready() { for _ in $(seq 900); do $src logs b 2>/dev/null | grep -q ready && return 0; sleep 0.1; done; return 1; }

# run_one SIZE STRATEGY → "longest_gap_ms downtime_ms bytes", or "refused" when ckpt refuses it.
run_one() {
  local size=$1 strategy=$2 out before gaps
  $src rm -af >/dev/null 2>&1 || true; $dst rm -af >/dev/null 2>&1 || true
  $src run -d --network none --name b memhog /bin/memhog "$size" pauses >/dev/null
  wait_ready || { echo "the application never got ready" >&2; exit 1; }
  sleep 1
  before=$($src logs b | wc -l)
  if ! out=$($src migrate --json --strategy "$strategy" \
    --identity "$work/sshd/user_key" --ssh-option StrictHostKeyChecking=no \
    --ssh-option UserKnownHostsFile=/dev/null --ssh-option LogLevel=ERROR \
    --remote-ckpt "$bin --runroot /run/ckpt-bench-pdst" \
    b "ssh://root@$far_ip:$ssh_port/var/lib/ckpt-bench-pdst" 2>"$work/err"); then
    echo refused; return
  fi
  # Long enough for every page the application touches to have come, and for it to say so.
  sleep 3
  [ "$($dst inspect -f '{{.State.Status}}' b)" = running ] || { echo "b does not run at the destination" >&2; exit 1; }
  # The far side's log goes on from the one here when it was carried; only what follows counts.
  gaps=$($dst logs b | awk -v skip="$before" -v carried="$($dst logs b 2>/dev/null | head -1 | grep -c ready)" \
    'NR > skip * carried && $1 == "gap" {print $2}' | sort -n | tail -1)
  local downtime bytes
  read -r downtime bytes < <(printf '%s' "$out" | python3 -c 'import json, sys; m = json.load(sys.stdin); print(m["downtime-ms"], m["bytes-sent"])')
  echo "$(( ${gaps:-0} / 1000 )) $downtime $bytes"
  $dst rm -f b >/dev/null
}

echo "the longest pause an application touching its memory every 5 ms sees, moved by ckpt migrate to a store behind its own network namespace and sshd; $rounds rounds, medians (spread)"
printf '%-5s | %-14s | %-22s | %-12s | %s\n' MiB strategy "longest pause ms" "downtime ms" "sent MiB"
for size in ${SIZES:-64 512 2048}; do
  for strategy in ${STRATEGIES:-post-copy stop-and-copy pre-copy}; do
    : > "$work/rounds"
    for _ in $(seq "$rounds"); do run_one "$size" "$strategy" >> "$work/rounds"; done
    if grep -q refused "$work/rounds"; then
      printf '%-5s | %-14s | refused: %s\n' "$size" "$strategy" "$(grep -o 'mem_dirty_track\|[^:]*$' "$work/err" | head -1)"
      continue
    fi
    col() { cut -d' ' -f"$1" "$work/rounds"; }
    printf '%-5s | %-14s | %6s (%s)%*s | %12s | %s\n' "$size" "$strategy" "$(col 1 | median)" "$(col 1 | spread)" 4 "" \
      "$(col 2 | median)" "$(( $(col 3 | median) >> 20 ))"
  done
done
