#!/usr/bin/env bash
# Migration between two stores on this machine, ckpt beside the path a podman user takes today,
# in the same run: a container holding N MiB of resident memory (half incompressible) moves
#   ckpt:   `ckpt migrate` over ssh (a real sshd on loopback), stop-and-copy, streamed;
#   podman: `podman container checkpoint --create-image`, `podman push` to a real registry on
#           loopback, `podman rmi` (the far side has no copy), `podman pull`, `podman container
#           restore`.
# Reports medians of downtime (freeze to running at the destination), total time, bytes moved
# and peak RSS on each side, with the ckpt/podman ratio. Usage: bench/migrate.sh [ROUNDS]
# SIZES="64 512 2048" chooses the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source bench/lib.sh
prepare
bin="$PWD/target/release/ckpt"
work=/var/tmp/ckpt-bench-migrate
src="$bin --root /var/lib/ckpt-bench-src --runroot /run/ckpt-bench-src"
dst="$bin --root /var/lib/ckpt-bench-dst --runroot /run/ckpt-bench-dst"
wait_ready() { for _ in $(seq 600); do "$@" 2>/dev/null | grep -q ready && return 0; sleep 0.1; done; echo "container never got ready" >&2; return 1; }

rm -rf "$work"; mkdir -p "$work/sshd" "$work/registry"; memhog_rootfs "$work"
for store in "$src" "$dst"; do $store rm -af >/dev/null 2>&1 || true; $store image import "$work/rootfs.tar" memhog >/dev/null; done
podman rm -f b >/dev/null 2>&1 || true
podman image rm -f localhost/memhog >/dev/null 2>&1 || true
podman import -q "$work/rootfs.tar" localhost/memhog >/dev/null

# A real sshd and a real registry on free loopback ports, stopped on exit.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ssh_port=$(free_port); registry_port=$(free_port)
sshd_config "$work/sshd" 127.0.0.1 "$ssh_port"
/usr/sbin/sshd -f "$work/sshd/config" -E "$work/sshd/log"
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$work/registry/data" "$registry_port" > "$work/registry/config.yml"
docker-registry serve "$work/registry/config.yml" >/dev/null 2>&1 &
registry_pid=$!
cleanup() { kill "$(cat "$work/sshd/pid")" "$registry_pid" 2>/dev/null || true; }
trap cleanup EXIT
sleep 1

# run_ckpt SIZE → "downtime_ms total_ms bytes src_rss_kib dst_rss_kib"
run_ckpt() {
  local size=$1 t0 t1 out
  $src rm -af >/dev/null 2>&1 || true; $dst rm -af >/dev/null 2>&1 || true
  $src run -d --network none --name b memhog /bin/memhog "$size" >/dev/null
  wait_ready $src logs b
  t0=$(now)
  out=$(/usr/bin/time -f '%M' -o "$work/src-rss" $src migrate --json \
    --identity "$work/sshd/user_key" --ssh-option StrictHostKeyChecking=no \
    --ssh-option UserKnownHostsFile=/dev/null --ssh-option LogLevel=ERROR \
    --remote-ckpt "/usr/bin/time -f %M -o $work/dst-rss $bin --runroot /run/ckpt-bench-dst" \
    b "ssh://root@127.0.0.1:$ssh_port/var/lib/ckpt-bench-dst")
  t1=$(now)
  [ "$($dst inspect -f '{{.State.Status}}' b)" = running ] || { echo "ckpt: b does not run at the destination" >&2; exit 1; }
  local downtime bytes
  read -r downtime bytes < <(printf '%s' "$out" | python3 -c 'import json, sys; m = json.load(sys.stdin); print(m["downtime-ms"], m["bytes-sent"])')
  echo "$downtime $(( (t1 - t0) / 1000000 )) $bytes $(cat "$work/src-rss") $(cat "$work/dst-rss")"
  $dst rm -f b >/dev/null
}

# run_podman SIZE → the same columns
run_podman() {
  local size=$1 image="localhost:$registry_port/bench/b:1" t0 t1 before after src_rss dst_rss
  podman rm -f -t 0 b >/dev/null 2>&1 || true
  podman image rm -f "$image" >/dev/null 2>&1 || true
  podman run -d --network none --name b localhost/memhog /bin/memhog "$size" >/dev/null
  wait_ready podman logs b
  before=$(du -sb "$work/registry" | cut -f1)
  t0=$(now)
  /usr/bin/time -f '%M' -o "$work/p1" podman --runtime runc container checkpoint --create-image "$image" b >/dev/null
  /usr/bin/time -f '%M' -o "$work/p2" podman --runtime runc push -q --tls-verify=false "$image" >/dev/null
  # The far side has its own store: the local copy and the container go first.
  podman rm -f b >/dev/null; podman image rm -f "$image" >/dev/null
  /usr/bin/time -f '%M' -o "$work/p3" podman --runtime runc pull -q --tls-verify=false "$image" >/dev/null
  /usr/bin/time -f '%M' -o "$work/p4" podman --runtime runc container restore "$image" >/dev/null
  t1=$(now)
  after=$(du -sb "$work/registry" | cut -f1)
  src_rss=$(sort -n "$work/p1" "$work/p2" | tail -1); dst_rss=$(sort -n "$work/p3" "$work/p4" | tail -1)
  echo "$(( (t1 - t0) / 1000000 )) $(( (t1 - t0) / 1000000 )) $(( after - before )) $src_rss $dst_rss"
  podman rm -f -t 0 b >/dev/null
  podman image rm -f "$image" >/dev/null 2>&1 || true
}

spread() { sort -n | awk '{a[NR]=$1} END {printf "%s-%s", a[1], a[NR]}'; }

echo "ckpt migrate (stop-and-copy, ssh stream) against podman checkpoint --create-image, push, pull, restore; $rounds rounds, medians (spread)"
printf '%-5s | %-30s | %-24s | %-22s | %-20s | %-20s\n' MiB "downtime ms: ckpt podman ratio" "total ms: ckpt podman" "moved MiB: ckpt podman" "src RSS MiB: c p" "dst RSS MiB: c p"
for size in ${SIZES:-64 512 2048}; do
  for _ in $(seq "$rounds"); do run_ckpt "$size"; done > "$work/ckpt.rounds"
  for _ in $(seq "$rounds"); do run_podman "$size"; done > "$work/podman.rounds"
  col() { cut -d' ' -f"$2" "$work/$1.rounds" | median; }
  printf '%-5s | %6s (%s) %6s %5s | %6s %6s %7s | %6s %6s %7s | %5s %5s | %5s %5s\n' "$size" \
    "$(col ckpt 1)" "$(cut -d' ' -f1 "$work/ckpt.rounds" | spread)" "$(col podman 1)" "$(ratio "$(col ckpt 1)" "$(col podman 1)")" \
    "$(col ckpt 2)" "$(col podman 2)" "$(ratio "$(col ckpt 2)" "$(col podman 2)")" \
    "$(( $(col ckpt 3) >> 20 ))" "$(( $(col podman 3) >> 20 ))" "$(ratio "$(col ckpt 3)" "$(col podman 3)")" \
    "$(( $(col ckpt 4) >> 10 ))" "$(( $(col podman 4) >> 10 ))" "$(( $(col ckpt 5) >> 10 ))" "$(( $(col podman 5) >> 10 ))"
done
