common="--num_gpus 1 --unroll true --warmup 1 --windows 3 --steps 10"
M=BIGLSTM,BIG_F512,BIG_G2,BIG_G4,BIG_G8
i=0
for v in head gatewhere head gatewhere; do
  i=$((i+1))
  (cd abx/$v && PYTHONPATH=/tmp/site:$PWD timeout 140 python benchmarks/lm_step.py --dtype bf16 --models $M $common --out $OUT/${v}_bf16_$i.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v $SECONDS")
done
for v in head gatewhere; do
  (cd abx/$v && PYTHONPATH=/tmp/site:$PWD timeout 70 python benchmarks/lm_step.py --dtype tf32 --models BIGLSTM,BIG_G4 $common --out $OUT/${v}_tf32.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v tf32 $SECONDS")
done
