# RNN-only A/B of the (gate, group)-batched G-LSTM einsum (commit 029e02e, the working tree) against a25b343 (exported to abx/head), 1×H200.
for d in tf32 bf16; do
for t in head new; do
  dir=.; [ $t = head ] && dir=abx/head
  (cd $dir && PYTHONPATH=/tmp/site:$PWD python benchmarks/rnn_throughput.py --cells LSTMP,G4,G8 --impls fused,fused_unrolled --dtypes $d --out $OUT/rnn_${t}_$d.json 2>&1 | grep -E "^(cell|LSTMP|G)" | sed "s/^/$t /")
done; done
