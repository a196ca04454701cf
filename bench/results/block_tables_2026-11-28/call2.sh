#!/usr/bin/env bash
# s19 call 2: GPU tests with block tables on the device; decode over 512 sequences, tables on/off
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
C=$(cat /tmp/b/COMMIT)
timeout 200 /tmp/b/tests/batchmax_tests --gtest_filter='*Cuda*:DummyWeights*:*LogitRows*:Sampler*:SdpaGroups*:Scheduler*:BlockPool*:PagedKVCache*:DeviceEviction*:TableArena*:AttentionWork*:AttentionSumsMemo*' > $OUT/gpu_tests.txt 2>&1
tail -3 $OUT/gpu_tests.txt; grep -E "^\[  FAILED" $OUT/gpu_tests.txt | head
run() { tag=$1; shift; env "$@" /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
  -n $N --input-len 512 --output-len 128 --mem-fraction 0.9 --modes batchmax --kv-budgets 512 --chunk 512 \
  --schedule auto --out $OUT/$tag.json > $OUT/$tag.log 2>&1; echo "== $tag"; grep -E "^requests|output tok/s" $OUT/$tag.log | head -3; }
N=512 run host512_tables BATCHMAX_PROFILE=host
sed -n '/profile decode steps: 127/,/profile prefill/p' $OUT/host512_tables.log | head -14
N=512 run host512_copy BATCHMAX_PROFILE=host BATCHMAX_CUDA_BLOCK_TABLES=0
sed -n '/profile decode steps: 127/,/profile prefill/p' $OUT/host512_copy.log | head -14
N=512 run plain512_tables X=1
N=512 run plain512_copy BATCHMAX_CUDA_BLOCK_TABLES=0
N=512 run plain512_hostslots BATCHMAX_KV_SLOTS_FROM_HOST=1
N=256 run plain256_tables X=1
cd $REAL_OUT && tar czf call2.tgz r && rm -rf r && ls -la
