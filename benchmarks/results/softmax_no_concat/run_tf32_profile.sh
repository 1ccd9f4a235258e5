common="--num_gpus 1 --unroll true --warmup 1 --windows 3 --steps 10"
for v in head new; do
  d=abx/$v; [ $v = new ] && d=.
  (cd $d && PYTHONPATH=/tmp/site:$PWD timeout 100 python benchmarks/lm_step.py --dtype tf32 --models BIGLSTM,BIG_F512,BIG_G4 $common --out $OUT/${v}_tf32.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v tf32 $SECONDS")
done
mkdir -p $OUT/profile
for m in BIGLSTM BIG_G4; do
  timeout 100 python benchmarks/profile_lm_step.py --model $m --unroll --num_gpus 1 --top 60 --out $OUT/profile/${m}_1xh200_unrolled.json > $OUT/profile/${m}.log 2>&1; tail -2 $OUT/profile/${m}.log; echo "^ $m $SECONDS"
done
