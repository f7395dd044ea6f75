#!/usr/bin/env bash
# Scheduled checkpoints, ckpt's daemon beside what a podman user runs instead, in the same run:
#   ckpt: COUNT containers, one `--every 1m -R --export` schedule each (spread with --jitter, as
#         an operator would), `ckpt daemon --max-parallel 2`, for MINUTES minutes;
#   podman: the same number of podman containers, and a timer that fires every minute and runs
#         `podman container checkpoint -R -e` for each of them, two at a time (xargs -P2), for
#         the same time, with the same retention (the newest 3 archives per container).
# Reports the daemon's RSS over the run, its CPU per checkpoint (its own, beyond CRIU and runc,
# and with them), the lag from each checkpoint's scheduled time to its start (p50, p99), and for
# podman the wall time and CPU per checkpoint and the same lag.
# Usage: bench/schedule.sh   (COUNT=50 MINUTES=10 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-50}
minutes=${MINUTES:-10}
source bench/lib.sh
prepare
work=/var/tmp/ckpt-bench-schedule
ckpt="$PWD/target/release/ckpt --root $work/root --runroot /run/ckpt-bench-schedule"
cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  $ckpt rm -a -f >/dev/null 2>&1 || true
  for i in $(seq "$count"); do echo "sched-$i"; done | xargs -r podman --runtime runc rm -f -t 0 >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work" /run/ckpt-bench-schedule; mkdir -p "$work/ckpt-out" "$work/podman-out"

# clock ticks per second, for /proc/PID/stat
hz=$(getconf CLK_TCK)
percentiles() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "n/a n/a"; exit}; p50=a[int(NR*0.5)+(NR*0.5>int(NR*0.5))]; i=int(NR*0.99); if (i<NR*0.99) i++; print p50, a[i]}'; }

echo "== ckpt: $count containers, one schedule each (every 1m, jitter 55s), $minutes min"
for i in $(seq "$count"); do
  $ckpt run -d --name "sched-$i" busybox sh -c 'while :; do echo tick; sleep 5; done' >/dev/null
  $ckpt schedule add "sched-$i" --every 1m --jitter 55s --container "sched-$i" -R \
    --export "$work/ckpt-out/{name}-{time}.tar.zst" --retainer-config '{"keep-last": 3}' >/dev/null
done
$ckpt daemon --max-parallel 2 > "$work/daemon.log" 2>"$work/daemon.err" &
daemon=$!
: > "$work/rss.txt"
end=$(( $(date +%s) + minutes * 60 ))
while [ "$(date +%s)" -lt "$end" ]; do
  awk '/^VmRSS/ {print $2}' "/proc/$daemon/status" >> "$work/rss.txt"
  sleep 10
done
read -r utime stime cutime cstime < <(awk '{print $14, $15, $16, $17}' "/proc/$daemon/stat")
kill -TERM "$daemon"; wait "$daemon" || true; daemon=
ok=$(grep '"event":"checkpoint"' "$work/daemon.log" | grep -c '"result":"ok"' || true)
grep '"event":"checkpoint"' "$work/daemon.log" | grep -o '"lag-ms":[0-9]*' | cut -d: -f2 > "$work/ckpt-lag.txt" || true
grep '"event":"checkpoint"' "$work/daemon.log" | grep -o '"duration-ms":[0-9]*' | cut -d: -f2 > "$work/ckpt-wall.txt" || true
read -r lag50 lag99 < <(percentiles < "$work/ckpt-lag.txt")
read -r wall50 wall99 < <(percentiles < "$work/ckpt-wall.txt")
own_ms=$(( (utime + stime) * 1000 / hz ))
all_ms=$(( (utime + stime + cutime + cstime) * 1000 / hz ))
# Warm: two minutes in (12 samples), once the engine and the components are loaded.
rss_warm=$(sed -n 12p "$work/rss.txt"); rss_last=$(tail -n 1 "$work/rss.txt")
rss_max=$(sort -n "$work/rss.txt" | tail -n 1)
failed=$(grep '"event":"checkpoint"' "$work/daemon.log" | grep -vc '"result":"ok"' || true)
$ckpt rm -a -f >/dev/null 2>&1 || true

echo "== podman: $count containers, a timer every minute running 'podman container checkpoint -R -e', two at a time, $minutes min"
# The same busybox image as ckpt's, so both run the same bytes.
$ckpt image save -o "$work/busybox.tar" busybox >/dev/null
podman load -i "$work/busybox.tar" >/dev/null
for i in $(seq "$count"); do
  podman rm -f "sched-$i" >/dev/null 2>&1 || true
  podman run -d --name "sched-$i" localhost/busybox sh -c 'while :; do echo tick; sleep 5; done' >/dev/null
done
: > "$work/podman-runs.txt"
# One container's checkpoint, as the timer's script runs it: "lag_ms wall_ms cpu_ms".
one() {
  local name=$1 slot=$2 start end
  start=$(date +%s%3N)
  /usr/bin/time -f "%U %S" -o "$work/time-$name" podman --runtime runc container checkpoint -R \
    -e "$work/podman-out/$name-$start.tar.zst" "$name" >/dev/null 2>>"$work/podman.err" || echo "failed $name" >> "$work/podman.err"
  end=$(date +%s%3N)
  # Retention as a user writes it: keep the newest 3.
  ls -t "$work/podman-out/$name-"*.tar.zst 2>/dev/null | tail -n +4 | xargs -r rm -f
  tail -n 1 "$work/time-$name" | awk -v lag=$((start - slot)) -v wall=$((end - start)) '{printf "%d %d %d\n", lag, wall, ($1 + $2) * 1000}'
}
export -f one; export work
end=$(( $(date +%s) + minutes * 60 ))
while true; do
  slot=$(( ( $(date +%s) / 60 + 1 ) * 60 ))
  [ "$slot" -ge "$end" ] && break
  sleep $(( slot - $(date +%s) ))
  for i in $(seq "$count"); do echo "sched-$i"; done | xargs -P 2 -I{} bash -c "one {} ${slot}000" >> "$work/podman-runs.txt"
done
read -r plag50 plag99 < <(cut -d' ' -f1 "$work/podman-runs.txt" | percentiles)
read -r pwall50 pwall99 < <(cut -d' ' -f2 "$work/podman-runs.txt" | percentiles)
podman_count=$(wc -l < "$work/podman-runs.txt")
pcpu=$(awk '{s += $3} END {if (NR) printf "%d", s / NR; else print 0}' "$work/podman-runs.txt")
pfailed=$(grep -c '^failed' "$work/podman.err" 2>/dev/null || true)

echo
echo "ckpt daemon: $ok checkpoints ok, $failed not ok, in $minutes min"
echo "  lag slot+jitter -> dump start: p50 ${lag50} ms, p99 ${lag99} ms"
echo "  wall per checkpoint: p50 ${wall50} ms, p99 ${wall99} ms"
echo "  daemon CPU per checkpoint: $(( own_ms / (ok > 0 ? ok : 1) )) ms own (beyond CRIU and runc), $(( all_ms / (ok > 0 ? ok : 1) )) ms with its children"
echo "  daemon RSS: ${rss_warm:-n/a} KiB two minutes in, ${rss_last} KiB at the end, ${rss_max} KiB at most"
echo "podman timer: $podman_count checkpoints, ${pfailed:-0} failed"
echo "  lag slot -> checkpoint start: p50 ${plag50} ms, p99 ${plag99} ms"
echo "  wall per checkpoint: p50 ${pwall50} ms, p99 ${pwall99} ms"
echo "  CPU per checkpoint (podman and its children): ${pcpu} ms"
awk -v c="$(( all_ms / (ok > 0 ? ok : 1) ))" -v p="$pcpu" -v cw="$wall50" -v pw="$pwall50" \
  'BEGIN {printf "ratios ckpt/podman: CPU per checkpoint %.2fx, wall per checkpoint (p50) %.2fx\n", c / (p ? p : 1), cw / (pw ? pw : 1)}'
