#!/usr/bin/env bash
# s18 call 1: GPU tests; W-full batchmax with --schedule auto and decode-first (one
# process each); W-full full with auto
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
/tmp/b/tests/batchmax_tests --gtest_filter='*Cuda*:DummyWeights*:*LogitRows*:Sampler*:SdpaGroups*:Scheduler*:StepSchedule*' > $OUT/gpu_tests.txt 2>&1
tail -3 $OUT/gpu_tests.txt; grep -E "^\[  FAILED" $OUT/gpu_tests.txt | head
for s in auto decode-first; do SCHEDULE=$s STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 TAG=_bm_$s bench/device/run_throughput.sh /tmp/b 2>&1 | tail -3 | head -1; grep "^requests" $OUT/w_full_bm_$s.log; done
for s in auto decode-first; do SCHEDULE=$s STAGES=full FULL_MODES=full FULL_BUDGETS=512 TAG=_full_$s bench/device/run_throughput.sh /tmp/b 2>&1 | tail -3 | head -1; grep "^requests" $OUT/w_full_full_$s.log; done
cd $REAL_OUT && tar czf call1.tgz r && rm -rf r && ls -la
