# One H200: XLA GEMM-fusion settings, one process each, the defaults first and last.
M=BIGLSTM,BIG_F512,BIG_G4
common="--dtype bf16 --num_gpus 1 --unroll true --warmup 2 --windows 3 --steps 10"
i=0
for flags in "" "--xla_gpu_triton_fusion_level=1" "--xla_gpu_triton_fusion_level=0" \
             "--xla_gpu_experimental_enable_triton_heroless_priority_fusion=true" "--xla_gpu_enable_triton_gemm=false" ""; do
  i=$((i+1))
  XLA_FLAGS="$flags" timeout 150 python benchmarks/lm_step.py --models $M $common --out $OUT/sweep_$i.json 2>&1 | grep -E "^(BIG|Error|.*Error)" | cut -c1-60; echo "^ $i [$flags] $SECONDS"
done
