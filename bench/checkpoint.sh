#!/usr/bin/env bash
# Side-by-side benchmark of `ckpt checkpoint --export` / `restore --import` against podman's, on
# the same workload in the same run: a container holding 64 MiB or 512 MiB of resident memory,
# for each compression. Reports wall time, CRIU frozen time, archive size and peak RSS of the
# tool, and the ratio ckpt/podman for each. Usage: bench/checkpoint.sh [ROUNDS]
# SIZES="64 512" and COMPRESSIONS="zstd gzip none" choose the cases.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/lib.sh
prepare
ckpt="$PWD/target/release/ckpt --root /var/lib/ckpt-bench --runroot /run/ckpt-bench"
work=/var/tmp/ckpt-bench
rm -rf "$work"; memhog_rootfs "$work"
$ckpt image import "$work/rootfs.tar" memhog >/dev/null
podman image rm -f localhost/memhog >/dev/null 2>&1 || true
podman import -q "$work/rootfs.tar" localhost/memhog >/dev/null

wait_ready() { for _ in $(seq 200); do "$@" 2>/dev/null | grep -q ready && return 0; sleep 0.1; done; echo "container never got ready" >&2; return 1; }
peak_kib() { sed -n 's/^maxrss //p' "$1"; }
# CPU time (user + system, ms) of a command and every child it waited for: CRIU and runc too.
cpu_ms() { awk '/^cpu / {printf "%d", ($2 + $3) * 1000}' "$1"; }
# The real binaries, never the shell functions above: podman is given its runtime where timed.
timed() { local out=$1; shift; /usr/bin/time -f $'maxrss %M\ncpu %U %S' -o "$out" "$@"; }

# The previous step's dirty pages (a gigabyte of images and archive) are written back before
# each timed step, so that no tool pays for the one measured before it.
settle() { sync; sleep 0.3; }

# The runtime's share of a restore (runc and CRIU), which both tools wait for the same way.
runtime_restore_ms() { printf '%s' "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["container_statistics"][0]["runtime_restore_duration"] // 1000)'; }

# run_one TOOL SIZE COMPRESSION → "wall_ms frozen_us size_bytes rss_kib restore_ms checkpoint_cpu_ms runtime_restore_ms"
run_one() {
  local tool=$1 size=$2 comp=$3 archive="$work/$1.tar" stats restored t0 t1 t2 t3
  rm -f "$archive"
  if [ "$tool" = ckpt ]; then
    $ckpt rm -f b b2 >/dev/null 2>&1 || true
    $ckpt run -d --network none --name b memhog /bin/memhog "$size" >/dev/null
    wait_ready $ckpt logs b
    settle; t0=$(now)
    stats=$(timed "$work/rss" $ckpt checkpoint --print-stats -c "$comp" -e "$archive" b)
    t1=$(now)
    $ckpt rm -f b >/dev/null
    settle; t2=$(now); restored=$($ckpt restore --print-stats -i "$archive" -n b2); t3=$(now)
    $ckpt rm -f b2 >/dev/null
  else
    podman rm -f -t 0 b b2 >/dev/null 2>&1 || true
    podman run -d --network none --name b localhost/memhog /bin/memhog "$size" >/dev/null
    wait_ready podman logs b
    settle; t0=$(now)
    stats=$(timed "$work/rss" podman --runtime runc container checkpoint --print-stats -c "$comp" -e "$archive" b)
    t1=$(now)
    podman rm -f -t 0 b >/dev/null
    settle; t2=$(now); restored=$(podman container restore --print-stats -i "$archive" -n b2); t3=$(now)
    podman rm -f -t 0 b2 >/dev/null
  fi
  local frozen
  frozen=$(printf '%s' "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["container_statistics"][0]["criu_statistics"].get("frozen_time", 0))')
  echo "$(( (t1 - t0) / 1000000 )) $frozen $(stat -c %s "$archive") $(peak_kib "$work/rss") $(( (t3 - t2) / 1000000 )) $(cpu_ms "$work/rss") $(runtime_restore_ms "$restored")"
}


printf '%-5s %-5s | %-22s | %-22s | %-26s | %-18s | %-22s\n' MiB comp "checkpoint wall ms" "frozen ms" "archive MiB" "peak RSS MiB" "restore wall ms"
printf '%-5s %-5s | %-22s | %-22s | %-26s | %-18s | %-22s\n' "" "" "ckpt podman ratio" "ckpt podman ratio" "ckpt podman ratio" "ckpt podman" "ckpt podman ratio"
for size in ${SIZES:-64 512}; do
  for comp in ${COMPRESSIONS:-zstd gzip none}; do
    declare -A results=() spreads=()
    # Rounds alternate between the tools, so that a slow spell of the machine falls on both, and
    # which goes first alternates too: at 4 GiB, with ckpt always first, CRIU's page-image write
    # took twice as long under ckpt; with podman first it was podman's that took longer (the VM
    # hands freed memory back to its host, and each tool ran in the other's wake).
    : > "$work/ckpt.rounds"; : > "$work/podman.rounds"
    for round in $(seq "$rounds"); do
      order="ckpt podman"; [ $((round % 2)) = 0 ] && order="podman ckpt"
      for tool in $order; do run_one "$tool" "$size" "$comp" >> "$work/$tool.rounds"; done
    done
    for tool in ckpt podman; do
      for col in 1 2 3 4 5 6 7; do results[$tool$col]=$(cut -d' ' -f$col "$work/$tool.rounds" | median); done
      spreads[$tool]="$(cut -d' ' -f1 "$work/$tool.rounds" | spread) $(cut -d' ' -f5 "$work/$tool.rounds" | spread)"
    done
    printf '%-5s %-5s | %5s %6s %7s    | %5s %6s %7s    | %6s %6s %7s      | %6s %6s     | %5s %6s %7s\n' "$size" "$comp" \
      "${results[ckpt1]}" "${results[podman1]}" "$(ratio "${results[ckpt1]}" "${results[podman1]}")" \
      "$(( results[ckpt2] / 1000 ))" "$(( results[podman2] / 1000 ))" "$(ratio "${results[ckpt2]}" "${results[podman2]}")" \
      "$(( results[ckpt3] >> 20 ))" "$(( results[podman3] >> 20 ))" "$(ratio "${results[ckpt3]}" "${results[podman3]}")" \
      "$(( results[ckpt4] >> 10 ))" "$(( results[podman4] >> 10 ))" \
      "${results[ckpt5]}" "${results[podman5]}" "$(ratio "${results[ckpt5]}" "${results[podman5]}")"
    echo "      spreads (min-max): checkpoint ckpt ${spreads[ckpt]% *} podman ${spreads[podman]% *}; restore ckpt ${spreads[ckpt]#* } podman ${spreads[podman]#* }"
    # CPU time over wall time is how many cores a checkpoint kept busy: near their number, it is
    # bound by CPU, and only less work (not more overlap) makes it faster. Restores are left out:
    # both tools' restores run CRIU under a detached supervisor, whose time no parent collects.
    echo "      checkpoint CPU ms (cores busy): ckpt ${results[ckpt6]} ($(ratio "${results[ckpt6]}" "${results[ckpt1]}")) podman ${results[podman6]} ($(ratio "${results[podman6]}" "${results[podman1]}")), on $(nproc) cores"
    echo "      restore, the runtime's part (runc and CRIU) ms: ckpt ${results[ckpt7]} podman ${results[podman7]}; the rest: ckpt $(( results[ckpt5] - results[ckpt7] )) podman $(( results[podman5] - results[podman7] ))"
    unset results spreads
  done
done
$ckpt image rm -f memhog >/dev/null 2>&1 || true
