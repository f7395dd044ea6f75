#!/usr/bin/env bash
# Every benchmark, one after another, each beside podman in its own run, into one report:
# exports and imports by compression and size (checkpoint.sh), `checkpoint -a` and `restore -a`
# (all.sh), migration (migrate.sh), policy decision costs (policy.sh) and what network setup
# adds to run and restore (network.sh); then exports and
# imports of a 4 GiB container, which take about 25 minutes at 3 rounds and 40 at 5 (BIG=0 leaves
# them out). The scheduled-checkpoint benchmark (schedule.sh) takes 20 minutes and runs only with
# SCHEDULE=1.
# Usage: bench/run.sh [ROUNDS] (default 5); the report goes to standard output and
# bench/last-run-all.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
{
  echo "== bench/run.sh, $(date -u +%FT%TZ), $rounds rounds, $(nproc) cores, $(uname -r)"
  echo "== checkpoint.sh"; bash bench/checkpoint.sh "$rounds"
  echo "== all.sh"; bash bench/all.sh "$rounds"
  echo "== migrate.sh"; bash bench/migrate.sh "$rounds"
  echo "== policy.sh"; bash bench/policy.sh
  echo "== network.sh"; bash bench/network.sh "$((rounds * 2))"
  if [ "${BIG:-1}" = 1 ]; then echo "== checkpoint.sh at 4 GiB"; SIZES=4096 bash bench/checkpoint.sh "$rounds"; fi
  if [ "${SCHEDULE:-0}" = 1 ]; then echo "== schedule.sh"; bash bench/schedule.sh; fi
} 2>&1 | grep -v 'level=warning' | tee bench/last-run-all.txt
