#!/usr/bin/env bash
# Same-call A/B of the training step: lm_step.py for each variant in the
# order given, each in its own process, so that every pair is timed on the
# same machine minutes apart. "new" is the working tree; any other name is
# the tree in abx/NAME (e.g. `git archive HEAD | tar -x -C abx/head`).
# Writes $OUT/VARIANT_DTYPE_SECONDS.json (SECONDS: when the run started).
#
#   bash benchmarks/ab_lm_step.sh GPUS DTYPE MODELS VARIANT...
#   bash benchmarks/ab_lm_step.sh 1 bf16 BIGLSTM,BIG_G4 head new head new
set -u -o pipefail
: "${OUT:?set OUT to the folder for the JSONs}"
gpus=$1; dtype=$2; models=$3; shift 3
common="--num_gpus $gpus --unroll true --warmup 2 --windows 5 --steps 10"
for v in "$@"; do
  d=abx/$v; [ "$v" = new ] && d=.
  (cd "$d" && PYTHONPATH=/tmp/site:$PWD timeout 200 python benchmarks/lm_step.py --dtype "$dtype" --models "$models" $common --out "$OUT/${v}_${dtype}_$SECONDS.json" 2>&1 | grep -E "^(model|BIG)"; echo "^ $v $dtype $SECONDS")
done
