#!/usr/bin/env bash
# What network setup adds to `run` and to `restore`, ckpt beside podman in the same run: each
# tool runs (and checkpoints and restores) a container on its default bridge network and with
# `--network none`, alternating, ROUNDS times (default 10). The added time is the difference of
# the medians; the ratio compares ckpt's (netavark, its own addresses) with podman's (CNI here).
# Usage: bench/network.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
source bench/lib.sh
prepare
work=/var/tmp/ckpt-bench-network
ckpt="$PWD/target/release/ckpt --root $work/root --runroot /run/ckpt-bench-network"
rm -rf "$work"; mkdir -p "$work"
$ckpt save -o "$work/busybox.tar" busybox >/dev/null
podman load -q -i "$work/busybox.tar" >/dev/null
podman rm -f -t 0 netbench >/dev/null 2>&1 || true
ms() { echo $(( ($2 - $1) / 1000000 )); }

# One round for one tool and one network: run, checkpoint, restore, remove; "run-ms restore-ms".
one() {
  local tool=$1 network=$2 t0 t1 t2 t3
  case $tool in
    ckpt)
      t0=$(now); $ckpt run -d --network "$network" --name netbench busybox sleep 1000 >/dev/null; t1=$(now)
      $ckpt checkpoint netbench >/dev/null
      t2=$(now); $ckpt restore netbench >/dev/null; t3=$(now)
      $ckpt rm -f netbench >/dev/null ;;
    podman)
      t0=$(now); podman run -d --network "$network" --name netbench localhost/busybox sleep 1000 >/dev/null; t1=$(now)
      podman container checkpoint netbench >/dev/null
      t2=$(now); podman container restore netbench >/dev/null; t3=$(now)
      podman rm -f -t 0 netbench >/dev/null ;;
  esac
  echo "$(ms "$t0" "$t1") $(ms "$t2" "$t3")"
}

for _ in $(seq "$rounds"); do
  one ckpt ckpt >> "$work/ckpt-bridge"; one ckpt none >> "$work/ckpt-none"
  one podman podman >> "$work/podman-bridge"; one podman none >> "$work/podman-none"
done
col() { cut -d' ' -f"$2" "$work/$1" | median; }
echo "network setup, $rounds rounds, medians (spread) in ms: on the default bridge network, with --network none, and the difference"
for step in run restore; do
  field=$([ $step = run ] && echo 1 || echo 2)
  cb=$(col ckpt-bridge $field); cn=$(col ckpt-none $field); pbridge=$(col podman-bridge $field); pnone=$(col podman-none $field)
  ca=$((cb - cn)); pa=$((pbridge - pnone))
  printf '%-8s ckpt %5d (%s) - %5d = %4d | podman %5d (%s) - %5d = %4d | added, ckpt/podman %s\n' "$step" \
    "$cb" "$(cut -d' ' -f$field "$work/ckpt-bridge" | spread)" "$cn" "$ca" \
    "$pbridge" "$(cut -d' ' -f$field "$work/podman-bridge" | spread)" "$pnone" "$pa" "$(ratio "$ca" "$pa")"
done
$ckpt rm -af >/dev/null 2>&1 || true
