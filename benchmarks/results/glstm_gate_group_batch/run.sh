# A/B of the (gate, group)-batched G-LSTM einsum (the working tree, commit 029e02e) against a25b343 (exported to abx/head), 1×H200, unrolled.
mkdir -p $OUT/hlo
common="--num_gpus 1 --unroll true --warmup 1 --windows 3 --steps 10"
for d in bf16 tf32; do
  M=BIGLSTM,BIG_G2,BIG_G4,BIG_G8; [ $d = tf32 ] && M=BIGLSTM,BIG_G4
  (cd abx/head && PYTHONPATH=/tmp/site:$PWD python benchmarks/lm_step.py --dtype $d --models $M $common --out $OUT/head_$d.json 2>&1 | grep -E "^(model|BIG)")
  PYTHONPATH=/tmp/site:$PWD python benchmarks/lm_step.py --dtype $d --models $M $common --out $OUT/new_$d.json 2>&1 | grep -E "^(model|BIG)"
done
python abx/hlo_check.py $OUT/hlo 2>&1 | grep -E "^(==|    )"
gzip $OUT/hlo/*.txt
