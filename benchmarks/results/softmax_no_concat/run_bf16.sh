common="--num_gpus 1 --unroll true --warmup 1 --windows 3 --steps 10"
M=BIGLSTM,BIG_F512,BIG_G2,BIG_G4,BIG_G8
for v in head new bf16gemm head new; do
  d=abx/$v; [ $v = new ] && d=.
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout 150 python benchmarks/lm_step.py --dtype bf16 --models $M $common --out $OUT/${v}_bf16_$SECONDS.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v $SECONDS")
done
