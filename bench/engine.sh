#!/usr/bin/env bash
# What ckpt adds to a podman checkpoint, in the same run: a podman container holding SIZE MiB
# (64 by default), checkpointed with `-R -e F.tar.zst`, alternating between
#   podman: `podman container checkpoint -R -e F.tar.zst NAME` (podman's own work, zstd);
#   api:    the same checkpoint through podman's REST API alone (`curl --unix-socket`, what ckpt
#           asks of podman: an uncompressed archive, streamed);
#   ckpt:   `ckpt checkpoint -R -e F.tar.zst --gate compliance podman:NAME`: the facts from
#           podman's inspect and the cgroup, the planner's decision, the API's dump, the export
#           (zstd) from podman's archive, the gate, the catalog and the audit log;
#   dry:    the same with --dry-run: ckpt's start, the host config, the facts, the planner and
#           the gate loaded from the compiled cache, and the plan; no dump.
# Reports the median wall time of each with its spread, ckpt/podman, and what ckpt adds beyond
# its own call to the API (ckpt - the API's time inside that run, from --print-stats), as a share
# of podman's own time. Usage: bench/engine.sh [ROUNDS]   (SIZE=64)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
size=${SIZE:-64}
source bench/lib.sh
prepare
work=/var/tmp/ckpt-bench-engine
socket=$work/podman.sock
rm -rf "$work"; mkdir -p "$work/out"
ckpt="$PWD/target/release/ckpt --root $work/root --runroot /run/ckpt-bench-engine"
printf '[engines]\npodman-socket = "%s"\n' "$socket" > "$work/ckpt.toml"
export CKPT_CONFIG=$work/ckpt.toml
cleanup() {
  podman rm -f -t 0 engine-bench >/dev/null 2>&1 || true
  [ -n "${service:-}" ] && kill "$service" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

memhog_rootfs "$work"
podman image rm -f localhost/memhog >/dev/null 2>&1 || true
podman import -q "$work/rootfs.tar" localhost/memhog >/dev/null
command podman --runtime runc system service --time 0 "unix://$socket" >/dev/null 2>&1 &
service=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
podman run -d --network none --name engine-bench --label data-class=public localhost/memhog /bin/memhog "$size" >/dev/null
for _ in $(seq 200); do podman logs engine-bench 2>/dev/null | grep -q ready && break; sleep 0.1; done
[ -f target/policies/compliance.wasm ] || bash scripts/build-policies >/dev/null
compliance=$PWD/target/policies/compliance.wasm
gate='{"classes": {"public": {"targets": ["/"]}}}'
settle() { sync; sleep 0.3; }

# run_one TOOL → "wall_ms api_ms" (api_ms: podman's API call inside ckpt's run; 0 for the others)
run_one() {
  local tool=$1 out="$work/out/$1.tar.zst" t0 t1 stats api=0
  rm -f "$out" "$work/out/api.tar"
  # Read without a fork: a `$(date)` on each side would add a process start to every figure.
  settle; t0=${EPOCHREALTIME/./}
  case $tool in
    podman) podman container checkpoint -R -e "$out" engine-bench >/dev/null ;;
    api) curl -sf --unix-socket "$socket" -X POST -o "$work/out/api.tar" \
      "http://d/v4.0.0/libpod/containers/engine-bench/checkpoint?export=true&leaveRunning=true" ;;
    ckpt) stats=$($ckpt checkpoint --print-stats -R -e "$out" --gate "$compliance" --gate-config "$gate" podman:engine-bench) ;;
    dry) $ckpt checkpoint --dry-run -R -e "$out" --gate "$compliance" --gate-config "$gate" podman:engine-bench >/dev/null ;;
  esac
  t1=${EPOCHREALTIME/./}
  if [ "$tool" = ckpt ]; then
    api=$(printf '%s' "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["container_statistics"][0]["runtime_checkpoint_duration"] // 1000)')
  fi
  echo "$(( (t1 - t0) / 1000 )) $api"
}

# Once each first, untimed: the policies compile into the cache, podman warms up.
for tool in podman api ckpt dry; do run_one "$tool" >/dev/null; done
for tool in podman api ckpt dry; do : > "$work/$tool.rounds"; done
for round in $(seq "$rounds"); do
  order="podman api ckpt dry"; [ $((round % 2)) = 0 ] && order="dry ckpt api podman"
  for tool in $order; do run_one "$tool" >> "$work/$tool.rounds"; done
done
col() { cut -d' ' -f"$2" "$work/$1.rounds"; }
podman_ms=$(col podman 1 | median); api_ms=$(col api 1 | median); ckpt_ms=$(col ckpt 1 | median)
dry_ms=$(col dry 1 | median)
# Per round: ckpt's wall time less the API call it made.
paste -d' ' <(col ckpt 1) <(col ckpt 2) | awk '{print $1 - $2}' > "$work/added"
added_ms=$(median < "$work/added")
echo "== a podman container of $size MiB, checkpoint -R -e zstd, $rounds rounds (median, spread)"
printf '%-8s %8s  %s\n' podman "$podman_ms" "$(col podman 1 | spread)"
printf '%-8s %8s  %s\n' api "$api_ms" "$(col api 1 | spread)"
printf '%-8s %8s  %s\n' ckpt "$ckpt_ms" "$(col ckpt 1 | spread)"
printf '%-8s %8s  %s\n' dry-run "$dry_ms" "$(col dry 1 | spread)"
echo "ckpt/podman: $(ratio "$ckpt_ms" "$podman_ms")"
share=$(python3 -c "print(f'{100*$added_ms/$podman_ms:.1f}')")
echo "ckpt beyond its API call (facts, decision, export from podman's archive, gate, catalog, audit):"
echo "  ${added_ms} ms ($(spread < "$work/added")), ${share}% of podman's own time"
echo "of which the decision path (start, config, facts, planner and gate loaded, plan; the dry run):"
echo "  ${dry_ms} ms, $(python3 -c "print(f'{100*$dry_ms/$podman_ms:.1f}')")% of podman's own time; the rest: the export's last chunk and its fsync, the gate, the catalog and the audit log"
