# One H200: the step with XLA's defaults against XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
# (every GEMM through cuBLAS), alternated twice.
dtype=$1; M=$2
common="--num_gpus 1 --unroll true --warmup 2 --windows 5 --steps 10"
for v in default cublas default cublas; do
  flags=""; [ $v = cublas ] && flags="--xla_gpu_enable_triton_gemm=false"
  XLA_FLAGS="$flags" timeout 200 python benchmarks/lm_step.py --dtype $dtype --models $M $common --out $OUT/${v}_${dtype}_$SECONDS.json 2>&1 | grep -E "^(model|BIG)"; echo "^ $v $dtype $SECONDS"
done
