python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 || exit
run() { name=$1; shift; env "$@" timeout 150 python benchmarks/lm_step.py --dtype tf32 --models BIGLSTM,BIG_F512,BIG_G4 --num_gpus 4 --unroll true --warmup 2 --windows 5 --steps 10 --out $OUT/${name}_$SECONDS.json > /tmp/$name.log 2>&1; grep -aE "^(model|BIG)" /tmp/$name.log; grep -aiE "coll channels|nchannels|NCCL version" /tmp/$name.log | sort | uniq -c | head -6; echo "^ $name $SECONDS"; }
run default NCCL_DEBUG=INFO
run ch32 NCCL_MIN_NCHANNELS=32
run buf16 NCCL_BUFFSIZE=16777216
run default2
