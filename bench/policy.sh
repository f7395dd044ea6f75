#!/usr/bin/env bash
# Policy decision costs, measured with the release build: load (first: compile; second: from
# the cache) and one decision (fresh store, instantiate, call, drop) for the Rust, Python and
# JavaScript policies. Usage: bench/policy.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-1000}
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/build-policies >/dev/null
# PROFILE=debug measures the test build (its dependencies, wasmtime included, are optimised).
profile=${PROFILE:-release}
if [ "$profile" = release ]; then cargo build --release --quiet -p ckpt; else cargo build --quiet -p ckpt; fi
ckpt=target/$profile/ckpt
cache=$(mktemp -d /var/tmp/ckpt-bench-cache.XXXXXX)
trap 'rm -rf "$cache"' EXIT
export CKPT_POLICY_CACHE=$cache
facts=tests/fixtures/facts.json
printf '%-14s %10s %12s %12s %10s %10s %10s %8s\n' policy size load-cold load-cached p50-us p99-us max-us fuel
for spec in "default|builtin:default|" "migration|target/policies/migration.wasm|{\"target\":\"/var/tmp/{name}.tar\"}" \
            "python-labels|target/policies/python_labels.wasm|" "js-hours|target/policies/js_hours.wasm|"; do
  IFS='|' read -r name file config <<< "$spec"
  # js-hours is a gate: it decides on an export's facts.
  [ "$name" = js-hours ] && facts=tests/fixtures/export-facts.json
  args=(policy bench "$file" --facts "$facts")
  [ -n "$config" ] && args+=(--policy-config "$config")
  n=$iterations
  case $name in python-labels|js-hours) n=$(( iterations / 5 > 0 ? iterations / 5 : 1 ));; esac
  cold=$("$ckpt" "${args[@]}" --iterations 1)
  warm=$("$ckpt" "${args[@]}" --iterations "$n")
  python3 - "$name" "$cold" "$warm" <<'PY'
import json, sys
name, cold, warm = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{name:<14} {warm['size_bytes']:>10} {cold['load_us']/1000:>10.1f}ms {warm['load_us']/1000:>10.1f}ms "
      f"{warm['decision_p50_us']:>10.1f} {warm['decision_p99_us']:>10.1f} {warm['decision_max_us']:>10.1f} {warm['fuel_per_decision']:>8}")
PY
done
