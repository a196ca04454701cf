#!/usr/bin/env bash
# s19 call 5 (final code, 7a02a62): GPU tests; decode-bound batch 64 with block tables on/off;
# W-full full+batchmax at the defaults (schedule auto)
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
rm -rf /tmp/b; cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
C=$(cat /tmp/b/COMMIT)
timeout 200 /tmp/b/tests/batchmax_tests --gtest_filter='*Cuda*:DummyWeights*:*LogitRows*:Sampler*:SdpaGroups*:Scheduler*:BlockPool*:PagedKVCache*:DeviceEviction*:TableArena*:AttentionWork*:AttentionSumsMemo*' > $OUT/gpu_tests.txt 2>&1
tail -2 $OUT/gpu_tests.txt; grep -E "^\[  FAILED" $OUT/gpu_tests.txt | head
for t in 1 0; do
  BATCHMAX_CUDA_BLOCK_TABLES=$t /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 -n 64 --input-len 512 --output-len 2048 \
    --mem-budget 24GiB --modes batchmax --kv-budgets 512 --chunk 512 --out $OUT/decode_tables$t.json > $OUT/decode_tables$t.log 2>&1
  echo "== decode tables=$t"; grep -E "^batchmax " $OUT/decode_tables$t.log | head -2; grep -h "decode_bw_frac_batch32\|copy_gbps" $OUT/decode_tables$t.json | head -3
done
mkdir -p $OUT/wfull
OUT=$OUT/wfull STAGES=full FULL_MODES=full,batchmax FULL_BUDGETS=512 bench/device/run_throughput.sh /tmp/b > $OUT/wfull/run.log 2>&1
echo "== wfull (defaults)"; grep -hE "^(full|batchmax) |^requests" $OUT/wfull/run.log | head -4
cd $REAL_OUT && tar czf call5.tgz r && rm -rf r && ls -la
