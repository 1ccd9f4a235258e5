# A/B on one H200: head (abx/head, gate-major z: the G-LSTM einsum batched
# over (gate, group) pairs) against the working tree (group-major z, batched
# over the groups), in the order given.
dtype=$1; M=$2; shift 2
common="--num_gpus 1 --unroll true --warmup 2 --windows 5 --steps 10"
for v in "$@"; do
  d=abx/$v; [ $v = new ] && d=.
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout 200 python benchmarks/lm_step.py --dtype $dtype --models $M $common --out $OUT/${v}_${dtype}_$SECONDS.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v $dtype $SECONDS")
done
