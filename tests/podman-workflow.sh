#!/usr/bin/env bash
# A checkpoint workflow as podman users script it, with `podman` on PATH. The integration test
# puts a wrapper there that is ckpt, so this runs against ckpt unchanged; it runs against podman
# too. It follows the steps of podman's test/system/520-checkpoint.bats, except what ckpt leaves
# out by design (pods, CNI networks, -p). IMAGE is a busybox image; FLOCK_IMAGE one with flock.
set -euo pipefail
IMAGE=${IMAGE:-busybox}
FLOCK_IMAGE=${FLOCK_IMAGE:-$IMAGE}
WORKDIR=${WORKDIR:-$(mktemp -d)}
mkdir -p "$WORKDIR"
STATE='{{.State.Status}}:{{.State.Running}}:{{.State.Paused}}:{{.State.Checkpointed}}'

fail() { echo "workflow: FAILED: $*" >&2; exit 1; }
is() { [[ "$1" == $2 ]] || fail "$3: got '$1', expected '$2'"; }
step() { echo "workflow: $*"; }

# Waits until the container's log matches the pattern.
wait_for_output() {
  local pattern=$1 cid=$2
  for _ in $(seq 100); do
    podman logs "$cid" 2>&1 | grep -q -- "$pattern" && return 0
    sleep 0.1
  done
  fail "container $cid never printed '$pattern'"
}

step "checkpoint and restore, twice, and the log keeps growing"
cid=$(podman run -d "$IMAGE" sh -c 'while :;do cat /proc/uptime; sleep 0.1;done')
wait_for_output '[1-9]' "$cid"
is "$(podman container checkpoint "$cid")" "$cid" "checkpoint prints the ID it was given"
is "$(podman container inspect --format "$STATE" "$cid")" "exited:false:false:true" "state after checkpoint"
before=$(podman logs "$cid" | wc -l)
is "$(podman container restore "$cid")" "$cid" "restore prints the ID it was given"
is "$(podman container inspect --format "$STATE" "$cid")" "running:true:false:false" "state after restore"
sleep 0.3
after=$(podman logs "$cid" | wc -l)
(( after > before )) || fail "no new output after the first restore ($before, then $after lines)"
podman container checkpoint "$cid" >/dev/null
before=$(podman container logs "$cid" | wc -l)
podman container restore "$cid" >/dev/null
sleep 0.3
after=$(podman container logs "$cid" | wc -l)
(( after > before )) || fail "no new output after the second restore ($before, then $after lines)"
podman rm -t 0 -f "$cid" >/dev/null

step "checkpoint -a and restore -a print IDs; a name prints the name"
cid=$(podman run -d "$IMAGE" top)
is "$(podman container checkpoint -a)" "$cid" "checkpoint -a"
is "$(podman container restore -a)" "$cid" "restore -a"
name=c_$RANDOM$RANDOM
podman run -d --name "$name" "$IMAGE" top >/dev/null
is "$(podman container checkpoint "$name")" "$name" "checkpoint by name"
is "$(podman container restore "$name")" "$name" "restore by name"
podman rm -t 0 -f "$cid" "$name" >/dev/null

step "export with a volume, import, and the volume's content comes along"
podman volume create myvol >/dev/null
name=c_$RANDOM$RANDOM
cid=$(podman run -d --name "$name" --volume myvol:/myvol "$IMAGE" \
  sh -c "cd /myvol; echo $name >cname; echo READY; while :;do cat /proc/uptime >mydate.tmp;mv -f mydate.tmp mydate;sleep 0.1;done")
wait_for_output READY "$cid"
date_before=$(podman exec "$cid" cat /myvol/mydate)
podman container checkpoint --ignore-rootfs --export="$WORKDIR/$name.tar.gz" "$name" >/dev/null
[[ -s "$WORKDIR/$name.tar.gz" ]] || fail "no archive at $WORKDIR/$name.tar.gz"
# As on another machine: neither the container nor its volume exists where the archive goes.
podman rm -t 0 -f "$cid" >/dev/null
podman volume rm -f myvol >/dev/null
is "$(podman container restore --import="$WORKDIR/$name.tar.gz")" "$cid" "restore --import prints the ID"
is "$(podman container inspect --format "$STATE" "$name")" "running:true:false:false" "state after import"
sleep 0.3
[[ "$(podman exec "$cid" cat /myvol/mydate)" != "$date_before" ]] || fail "the restored container did not update the volume"
is "$(podman exec "$cid" cat /myvol/cname)" "$name" "the volume came with the archive"
podman rm -t 0 -f "$cid" >/dev/null
podman volume rm -f myvol >/dev/null

step "file locks survive a checkpoint (--file-locks), exec -d, wait and logs"
action='flock test.lock sh -c "while [ -e /wait ];do sleep 0.5;done;for i in 1 2 3;do echo \$i;sleep 0.5;done"'
cid=$(podman run -d "$FLOCK_IMAGE" sh -c "touch /wait; touch test.lock; echo READY; $action & $action & wait")
wait_for_output READY "$cid"
is "$(podman container checkpoint --file-locks "$cid")" "$cid" "checkpoint --file-locks"
is "$(podman container inspect --format "$STATE" "$cid")" "exited:false:false:true" "state after checkpoint"
is "$(podman container restore --file-locks "$cid")" "$cid" "restore --file-locks"
podman exec -d "$cid" rm /wait
podman wait "$cid" >/dev/null
is "$(podman logs "$cid" | tr -d '\r\n')" "READY123123" "the lock was held across the checkpoint"
podman rm -t 0 -f "$cid" >/dev/null

step "checkpoint --latest and restore -l"
cid=$(podman run -d "$IMAGE" top)
is "$(podman container checkpoint --latest)" "$cid" "checkpoint --latest"
is "$(podman container inspect --format "$STATE" "$cid")" "exited:false:false:true" "state after checkpoint --latest"
is "$(podman container restore -l)" "$cid" "restore -l"
is "$(podman container inspect --format "$STATE" "$cid")" "running:true:false:false" "state after restore -l"
podman rm -t 0 -f "$cid" >/dev/null

step "all steps passed"
