#!/usr/bin/env bash
# The uniform alpha-8 ResNet-20 and a search's answer encrypted one after the other at bootstrap-128, each under
# experiments/memory_profile.py (resident memory, Go's heap, the work folder's disk every 10 s), for docs/results.md
# ("What does it cost under encryption?"). Needs pann[fhe] and the machine otherwise idle (about 16-22 GiB).
#
#   PANN_DATA_DIR=../shared/data bash experiments/encrypted_pair.sh RUN_ID OUT_DIR [IMAGES] [PARAMS] [ARGS...]
#
# RUN_ID: the search's MLflow parent run in ./mlflow.db, or alpha=A for the uniform ResNet-20 at alpha A (reported
# as uniformA; e.g. alpha=4, every ReLU at the catalog's cheapest degree, whatever its accuracy); OUT_DIR: where the
# reports, logs and samples go; IMAGES for
# the answer (default 4; the uniform network gets UNIFORM_IMAGES, default 1); PARAMS: a preset name or YAML (default
# bootstrap-128); ARGS: more pann fhe-check options for both (e.g. --diagonals-per-transform 32 --batch 4).
# GOMEMLIMIT, GOGC and OMP_NUM_THREADS are taken from the environment when set (pann fhe-check's defaults otherwise).
set -euo pipefail
run_id=${1:?usage: encrypted_pair.sh RUN_ID OUT_DIR [IMAGES] [PARAMS]}
out=${2:?usage: encrypted_pair.sh RUN_ID OUT_DIR [IMAGES] [PARAMS]}
images=${3:-4}
params=${4:-bootstrap-128}
extra=("${@:5}")
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/encrypted-pair-XXXX")
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

profile() {  # name, then the fhe-check arguments
  local name=$1; shift
  echo "$(date -u +%FT%TZ) $name: pann fhe-check $* --params $params ${extra[*]}" | tee -a "$out/commands.txt"
  python experiments/memory_profile.py --every 10 --disk "$work" --out "$out/${name}_memory.tsv" -- \
    pann fhe-check "$@" --params "$params" --workdir "$work" --json "${extra[@]}" \
    > "$out/${name}.json" 2> "$out/${name}.log" || echo "$name: exit status $?" | tee -a "$out/commands.txt"
  tail -1 "$out/${name}.log"
}

profile uniform8 --model resnet20 --weights resnet20_cifar10 --alpha 8 --images "${UNIFORM_IMAGES:-1}"
if [[ $run_id == alpha=* ]]; then
  profile "uniform${run_id#alpha=}" --model resnet20 --weights resnet20_cifar10 --alpha "${run_id#alpha=}" --images "$images"
else
  profile answer --run-id "$run_id" --images "$images"
fi
