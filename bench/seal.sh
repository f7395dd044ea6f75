#!/usr/bin/env bash
# What sealing costs: `checkpoint -e` and `restore -i` of a container holding SIZE MiB (half of
# it incompressible, bench/memhog.c), zstd, sealed to one age recipient beside plaintext, in the
# same run, alternating, ROUNDS times (default 5). Times are wall milliseconds of the whole
# command; peak RSS is ckpt's own (GNU time's maximum resident set size).
# Usage: bench/seal.sh [ROUNDS] [SIZE_MIB...]   (default sizes: 512 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; shift || true
sizes=("${@:-512 4096}"); read -r -a sizes <<<"${sizes[*]}"
source bench/lib.sh
prepare
work=/var/tmp/ckpt-bench-seal
ckpt="$PWD/target/release/ckpt --root $work/root --runroot /run/ckpt-bench-seal"
rm -rf "$work"; memhog_rootfs "$work"
$ckpt image import "$work/rootfs.tar" memhog >/dev/null
recipient=$($ckpt key generate -o "$work/key.txt")
ms() { echo $(( ($2 - $1) / 1000000 )); }
timed() { /usr/bin/time -f %M -o "$work/rss" "$@" >/dev/null; }

# One round: "export-ms import-ms export-rss-kib import-rss-kib" for plain or sealed.
one() {
  local size=$1 mode=$2 archive="$work/b.tar.zst" seal=() open=() t0 t1 t2 t3 rss_export
  if [ "$mode" = sealed ]; then archive="$work/b.tar.zst.age"; seal=(--encrypt-to "$recipient"); open=(--identity "$work/key.txt"); fi
  $ckpt run -d --network none --name b memhog /bin/memhog "$size" >/dev/null
  until $ckpt logs b 2>/dev/null | grep -q ready; do sleep 0.2; done
  t0=$(now); timed $ckpt checkpoint -e "$archive" "${seal[@]}" b; t1=$(now); rss_export=$(cat "$work/rss")
  $ckpt rm -f b >/dev/null
  t2=$(now); timed $ckpt restore -i "$archive" "${open[@]}"; t3=$(now)
  $ckpt rm -f b >/dev/null; rm -f "$archive"
  echo "$(ms "$t0" "$t1") $(ms "$t2" "$t3") $rss_export $(cat "$work/rss")"
}

echo "sealed (age, one X25519 recipient) against plaintext zstd, $rounds rounds, medians (spread)"
for size in "${sizes[@]}"; do
  rm -f "$work/plain-$size" "$work/sealed-$size"
  for _ in $(seq "$rounds"); do
    one "$size" plain >> "$work/plain-$size"; one "$size" sealed >> "$work/sealed-$size"
  done
  for field in 1 2; do
    step=$([ $field = 1 ] && echo export || echo import)
    p=$(cut -d' ' -f$field "$work/plain-$size" | median); s=$(cut -d' ' -f$field "$work/sealed-$size" | median)
    prss=$(cut -d' ' -f$((field + 2)) "$work/plain-$size" | median); srss=$(cut -d' ' -f$((field + 2)) "$work/sealed-$size" | median)
    printf '%5d MiB %-6s plain %6d ms (%s) | sealed %6d ms (%s) | sealed/plain %s | peak RSS MiB plain %d sealed %d\n' \
      "$size" "$step" "$p" "$(cut -d' ' -f$field "$work/plain-$size" | spread)" \
      "$s" "$(cut -d' ' -f$field "$work/sealed-$size" | spread)" "$(ratio "$s" "$p")" $((prss / 1024)) $((srss / 1024))
  done
done
$ckpt rm -af >/dev/null 2>&1 || true
$ckpt image rm -f memhog >/dev/null 2>&1 || true
