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
# p50 and p99 are warm decisions, on an instance made ahead (as between a checkpoint's
# decisions), by a thread whose core stayed awake; woken-p99 is the same after the thread slept;
# fresh-p50 and fresh-p99 make their instance inside the decision.
printf '%-14s %10s %12s %12s %10s %10s %10s %9s %9s %9s %8s\n' policy size load-cold load-cached p50-us p99-us max-us woken-p99 fresh-p50 fresh-p99 fuel
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
      f"{warm['decision_p50_us']:>10.1f} {warm['decision_p99_us']:>10.1f} {warm['decision_max_us']:>10.1f} "
      f"{warm['woken_p99_us']:>9.1f} {warm['fresh_instance_p50_us']:>9.1f} {warm['fresh_instance_p99_us']:>9.1f} {warm['fuel_per_decision']:>8}")
PY
done

# The machine's own tail beside them: fixed work about as long as a decision, timed as the
# decisions are, after a sleep and with the core kept awake (bench/jitter.c).
# Built in the cache directory, which the exit trap removes however the script ends.
gcc -O2 -pthread -o "$cache/jitter" bench/jitter.c
"$cache/jitter" "$iterations" | awk '{printf "machine jitter, %-7s %-6s p50 %5.1f us, p99 %5.1f us\n", $1, $2, $3, $4}'

# A policy's share of a real checkpoint's wall time: `checkpoint -R --export` of a small busybox
# container (where the policy's share is largest), five times with each planner, and the
# js-hours gate beside the default planner. Loading the component (from the compile cache) and
# every decision the checkpoint recorded count as the policy's.
store=$(mktemp -d /var/tmp/ckpt-bench-share.XXXXXX)
trap 'target/$profile/ckpt --root "$store/root" --runroot "$store/run" rm -a -f >/dev/null 2>&1; rm -rf "$cache" "$store"' EXIT
share=(target/$profile/ckpt --root "$store/root" --runroot "$store/run")
printf '%s\n' "[exports]" "directories = [\"$store\"]" > "$store/ckpt.toml"
export CKPT_CONFIG=$store/ckpt.toml
"${share[@]}" run -d --network none --name share busybox sh -c 'while :; do sleep 1; done' >/dev/null
echo
# share: loading and decisions; warm share: the decisions alone, as in a daemon that keeps its
# policies loaded between runs.
printf '%-24s %12s %12s %12s %8s %10s\n' policy checkpoint-ms load-ms decisions-us share warm-share
migration_config="{\"target\":\"$store/m-{name}.tar\"}"
# name|checkpoint flags|the components it loads
for spec in "default|--policy builtin:default|builtin:default" \
            "migration|--policy target/policies/migration.wasm --policy-config $migration_config|target/policies/migration.wasm" \
            "python-labels|--policy target/policies/python_labels.wasm|target/policies/python_labels.wasm" \
            "default+js-hours gate|--gate target/policies/js_hours.wasm|builtin:default target/policies/js_hours.wasm"; do
  IFS='|' read -r name flags components <<< "$spec"
  read -r -a flags <<< "$flags"
  load_us=0
  for component in $components; do
    # Loading from the compile cache, as every checkpoint after the first does.
    settings=(); [[ $component == *migration* ]] && settings=(--policy-config "$migration_config")
    facts=tests/fixtures/facts.json; [[ $component == *js_hours* ]] && facts=tests/fixtures/export-facts.json
    # The median of five loads: one load of a large component moves by half between runs.
    loaded=$(for _ in 1 2 3 4 5; do
        "$ckpt" policy bench "$component" --facts "$facts" --iterations 1 "${settings[@]}" 2>/dev/null \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["load_us"])' || echo 0
      done | sort -n | sed -n 3p)
    load_us=$((load_us + loaded))
  done
  for round in 1 2 3 4 5; do
    lines=0
    if [ -f "$store/root/decisions.jsonl" ]; then lines=$(wc -l < "$store/root/decisions.jsonl"); fi
    start=$(date +%s%N)
    "${share[@]}" checkpoint -R --export "$store/share.tar.zst" "${flags[@]}" share >/dev/null
    end=$(date +%s%N)
    decided=$(tail -n +$((lines + 1)) "$store/root/decisions.jsonl" | python3 -c 'import json,sys; print(sum(json.loads(l)["duration_us"] for l in sys.stdin))')
    echo "$(( (end - start) / 1000 )) $load_us $decided"
  done | sort -n | awk -v name="$name" 'NR == 3 {printf "%-24s %12.1f %12.1f %12d %7.2f%% %9.2f%%\n", name, $1 / 1000, $2 / 1000, $3, 100 * ($2 + $3) / $1, 100 * $3 / $1}'
done
