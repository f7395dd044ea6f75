#!/usr/bin/env bash
# The podman checkpoint workflow (tests/podman-workflow.sh), run unchanged through podman 4.3.1
# (on runc) and through ckpt as `podman`, alternating, in the same run. Reports each round's wall
# time, the medians and the ratio ckpt/podman. Usage: bench/podman-workflow.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
bash scripts/setup >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet -p ckpt
work=/var/tmp/ckpt-bench-workflow
rm -rf "$work"; mkdir -p "$work/bin" "$work/rootfs/bin" "$work/rootfs/usr/bin"
ckpt="$PWD/target/release/ckpt --root $work/ckpt-root --runroot /run/ckpt-bench-workflow"

# One image for both: busybox with every applet, plus the host's flock and its libraries.
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do [ -e "$work/rootfs/bin/$applet" ] || ln -s busybox "$work/rootfs/bin/$applet"; done
cp /usr/bin/flock "$work/rootfs/usr/bin/flock"
for lib in $(ldd /usr/bin/flock | grep -o '/[^ ]*'); do
  mkdir -p "$work/rootfs$(dirname "$lib")"; cp "$lib" "$work/rootfs$lib"
done
tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
$ckpt image import "$work/rootfs.tar" localhost/workflow >/dev/null
$ckpt save -o "$work/image.tar" localhost/workflow
podman load -q -i "$work/image.tar" >/dev/null

printf '#!/bin/sh\nexec %s "$@"\n' "$ckpt" > "$work/bin/ckpt-as-podman"
printf '#!/bin/sh\nexec /usr/bin/podman --runtime runc "$@"\n' > "$work/bin/podman-on-runc"
chmod +x "$work/bin/"*

run_one() {
  local wrapper=$1 dir="$work/path-$1"
  mkdir -p "$dir"; ln -sf "$work/bin/$wrapper" "$dir/podman"
  local start end
  start=$(date +%s%N)
  PATH="$dir:$PATH" IMAGE=localhost/workflow WORKDIR="$work/out-$wrapper" \
    bash tests/podman-workflow.sh >"$work/$wrapper.log" 2>&1 || { cat "$work/$wrapper.log" >&2; exit 1; }
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

: >"$work/ckpt.ms"; : >"$work/podman.ms"
for round in $(seq "$rounds"); do
  p=$(run_one podman-on-runc); c=$(run_one ckpt-as-podman)
  echo "round $round: podman ${p} ms, ckpt ${c} ms"
  echo "$p" >>"$work/podman.ms"; echo "$c" >>"$work/ckpt.ms"
done
pm=$(median <"$work/podman.ms"); cm=$(median <"$work/ckpt.ms")
echo "median: podman ${pm} ms, ckpt ${cm} ms, ratio ckpt/podman $(awk "BEGIN {printf \"%.2f\", $cm / $pm}")"
podman rmi -f localhost/workflow >/dev/null 2>&1 || true
