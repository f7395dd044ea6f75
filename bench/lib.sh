# Sourced by the benchmarks, from the repository's root: what they all set up, and the helpers
# they share.

# Everything installed, and the release binary built.
prepare() {
  bash scripts/setup >/dev/null
  command -v /usr/bin/time >/dev/null || apt-get install -y -qq time >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release --quiet -p ckpt
}

# Debian's crun has no checkpoint support and no hybrid-cgroup support: podman uses runc too.
podman() { command podman --runtime runc "$@"; }
now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { sort -n | awk 'NR == 1 {min = $1} {max = $1} END {print min "-" max}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else '-')"; }

# memhog_rootfs DIR: DIR/rootfs.tar, a root filesystem with busybox and bench/memhog.c (which
# holds N MiB, half incompressible, and prints "ready").
memhog_rootfs() {
  mkdir -p "$1/rootfs/bin"
  gcc -O2 -static -o "$1/rootfs/bin/memhog" bench/memhog.c
  cp /bin/busybox "$1/rootfs/bin/busybox"; ln -sf busybox "$1/rootfs/bin/sh"
  tar -C "$1/rootfs" -cf "$1/rootfs.tar" .
}

# sshd_config DIR ADDRESS PORT: in DIR, a host key, a user key (user_key) that root may log in
# with, and a config for an sshd of the benchmark's own on ADDRESS:PORT (its pid in DIR/pid).
sshd_config() {
  local dir=$1 address=$2 port=$3
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"; ssh-keygen -q -t ed25519 -N '' -f "$dir/user_key"
  cp "$dir/user_key.pub" "$dir/authorized_keys"
  cat > "$dir/config" <<CONFIG
Port $port
ListenAddress $address
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
PidFile $dir/pid
CONFIG
  mkdir -p /run/sshd
}
