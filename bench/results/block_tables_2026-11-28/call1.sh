#!/usr/bin/env bash
# s19 call 1: host profile of decode steps over 512 / 256 sequences; staging wait modes at 512
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
nproc; lscpu | grep -E "Model name|MHz" | head -3
which perf gdb py-spy 2>&1 | head
C=$(cat /tmp/b/COMMIT)
run() { tag=$1; shift; env "$@" /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
  -n $N --input-len 512 --output-len 128 --mem-fraction 0.9 --modes batchmax --kv-budgets 512 --chunk 512 \
  --schedule auto --out $OUT/$tag.json > $OUT/$tag.log 2>&1; echo "== $tag"; grep -E "^requests|decode_only|profile decode|profile mixed" $OUT/$tag.log | head; }
N=512 run host512 BATCHMAX_PROFILE=host
sed -n '/profile decode/,/profile [a-z]* steps/p' $OUT/host512.log | head -40
N=256 run host256 BATCHMAX_PROFILE=host
sed -n '/profile decode/,/profile [a-z]* steps/p' $OUT/host256.log | head -40
N=512 run plain512 X=1
N=512 run stream512 BATCHMAX_CUDA_STAGING_WAIT=stream
cd $REAL_OUT && tar czf call1.tgz r && rm -rf r && ls -la
