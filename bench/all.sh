#!/usr/bin/env bash
# `checkpoint -a` of COUNT running containers (default 20), ckpt beside podman in the same run,
# then `restore -a`. Reports median wall times of ROUNDS rounds (default 3) and the ratios.
# Usage: bench/all.sh [ROUNDS]; COUNT=N and PARALLEL=N (ckpt's --parallel) choose the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
count=${COUNT:-20}
source bench/lib.sh
prepare
ckpt="$PWD/target/release/ckpt --root /var/lib/ckpt-bench-all --runroot /run/ckpt-bench-all"
work=/var/tmp/ckpt-bench-all
rm -rf "$work"; mkdir -p "$work"
$ckpt rm -af >/dev/null 2>&1 || true
$ckpt save -o "$work/busybox.tar" busybox >/dev/null
podman load -q -i "$work/busybox.tar" >/dev/null
names() { for i in $(seq "$count"); do echo "all-$i"; done; }
# Both tools' `-a` take every running container: any but the bench's would be measured too.
others=$(podman ps --format '{{.Names}}' | grep -v '^all-[0-9]*$' || true)
if [ -n "$others" ]; then
  echo "bench/all.sh: podman has other running containers ($(echo $others)); stop them first" >&2
  exit 1
fi
names | xargs -r podman --runtime runc rm -f -t 0 >/dev/null 2>&1 || true
for i in $(seq "$count"); do
  $ckpt run -d --network none --name "all-$i" busybox sh -c 'i=0; while :; do i=$((i+1)); sleep 0.2; done' >/dev/null
  podman run -d --network none --name "all-$i" localhost/busybox sh -c 'i=0; while :; do i=$((i+1)); sleep 0.2; done' >/dev/null
done
parallel=${PARALLEL:+--parallel $PARALLEL}
: > "$work/ckpt"; : > "$work/podman"
for _ in $(seq "$rounds"); do
  t0=$(now); $ckpt checkpoint -a $parallel >/dev/null; t1=$(now); $ckpt restore -a >/dev/null; t2=$(now)
  echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))" >> "$work/ckpt"
  t0=$(now); podman container checkpoint -a >/dev/null; t1=$(now); podman container restore -a >/dev/null; t2=$(now)
  echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))" >> "$work/podman"
done
c1=$(cut -d' ' -f1 "$work/ckpt" | median); p1=$(cut -d' ' -f1 "$work/podman" | median)
c2=$(cut -d' ' -f2 "$work/ckpt" | median); p2=$(cut -d' ' -f2 "$work/podman" | median)
echo "$count containers, $rounds rounds, medians: checkpoint -a ckpt $c1 ms, podman $p1 ms, ratio $(ratio "$c1" "$p1"); restore -a ckpt $c2 ms, podman $p2 ms, ratio $(ratio "$c2" "$p2")"
echo "      spreads (min-max): checkpoint -a ckpt $(cut -d' ' -f1 "$work/ckpt" | spread) podman $(cut -d' ' -f1 "$work/podman" | spread); restore -a ckpt $(cut -d' ' -f2 "$work/ckpt" | spread) podman $(cut -d' ' -f2 "$work/podman" | spread)"
$ckpt rm -af >/dev/null
names | xargs -r podman --runtime runc rm -f -t 0 >/dev/null 2>&1 || true
