#!/usr/bin/env bash
# One process per (preset, level): a process holds what each compilation leaves in Orion's Go back end.
set -u
cd "$(dirname "$0")/../../.."  # the repository root
mkdir -p runs  # the logs
export OMP_NUM_THREADS=1 GOGC=20 GOMEMLIMIT=12GiB
for spec in bootstrap-128-deep:2 bootstrap-128-deep:7 bootstrap-128-deep:13 bootstrap-128:2 bootstrap-128:6 bootstrap-128:10; do
  params=${spec%%:*}; level=${spec##*:}
  .venv/bin/python benchmarks/fhe_linear_by_level.py --params "$params" --levels "$level" --channels 64 --size 8 \
    --repeats 3 --json "docs/measurements/fhe_deep/conv64_${params}_level${level}.json" > "runs/conv_${params}_${level}.log" 2>&1
  echo "$params $level exit $?"
done
