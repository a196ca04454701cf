#!/usr/bin/env bash
# s18 call 6: GPU tests; decode over 512 sequences traced with the pool's layer regions off/on;
# traced W-full step with the accumulate tuning off/on; W-full both modes (default code)
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
C=$(cat /tmp/b/COMMIT)
/tmp/b/tests/batchmax_tests --gtest_filter='*Cuda*:DummyWeights*:*LogitRows*:Sampler*:SdpaGroups*:Scheduler*:StepSchedule*:BlockPool*:PagedKVCache*' > $OUT/gpu_tests.txt 2>&1
tail -2 $OUT/gpu_tests.txt; grep -E "^\[  FAILED" $OUT/gpu_tests.txt | head
for r in 0 1; do
LD_PRELOAD=/tmp/b/lib/libbatchmax_kernel_trace.so BMX_TRACE_OUT=$OUT/trace_dec512_regions$r.txt BMX_TRACE_SKIP_S=12 BMX_TRACE_LEN_S=3 BMX_TRACE_DUMP=100 \
  BATCHMAX_KV_REGIONS=$r /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
  -n 512 --input-len 512 --output-len 256 --mem-fraction 0.9 --modes batchmax --kv-budgets 512 --chunk 512 \
  --schedule auto --out $OUT/trace_dec512_regions$r.json > $OUT/trace_dec512_regions$r.log 2>&1
echo "== regions $r"; grep "^requests" $OUT/trace_dec512_regions$r.log; sed -n 1p $OUT/trace_dec512_regions$r.txt; grep -m1 "flash_kernel" $OUT/trace_dec512_regions$r.txt | cut -c1-90
done
for v in 0 1; do BATCHMAX_CUDA_GEMM_TUNE_ACCUMULATE=$v BATCHMAX_CUDA_GEMM_VERBOSE=1 MODES=batchmax TAG=_acc$v bench/device/trace_run.sh /tmp/b wfull > /dev/null 2>&1; echo "== accumulate tuning $v"; grep "gemm tune" $OUT/trace_run_wfull_batchmax_acc$v.log | head -6; python3 bench/device/trace_groups.py $OUT/trace_wfull_batchmax_acc$v.txt > $OUT/groups_acc$v.txt 2>&1; head -8 $OUT/groups_acc$v.txt; done
STAGES=full FULL_MODES=full,batchmax FULL_BUDGETS=512 bench/device/run_throughput.sh /tmp/b 2>&1 | tail -5
cd $REAL_OUT && tar czf call6.tgz r && rm -rf r && ls -la
