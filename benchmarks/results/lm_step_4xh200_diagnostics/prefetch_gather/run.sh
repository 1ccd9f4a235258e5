# A/B on 4×H200: head (abx/head, the weights gathered where each step starts)
# against the working tree (gathered where the previous step's update ends).
dtype=$1; M=$2
common="--num_gpus 4 --unroll true --warmup 2 --windows 5 --steps 10"
for v in head new head new; do
  d=abx/$v; [ $v = new ] && d=.
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout 200 python benchmarks/lm_step.py --dtype $dtype --models $M $common --out $OUT/${v}_${dtype}_$SECONDS.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v $dtype $SECONDS")
done
