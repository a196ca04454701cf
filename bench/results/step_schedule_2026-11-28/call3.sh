#!/usr/bin/env bash
# s18 call 3: KV blocks taken from their layer's region of the pool. GPU tests; decode steps
# of 128 / 256 / 512 sequences (call 2 before: 10.62 / 15.41 / 32.86 ms); W-full batchmax
# with auto and decode-first, full with decode-first (one process each)
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
C=$(cat /tmp/b/COMMIT)
/tmp/b/tests/batchmax_tests --gtest_filter='*Cuda*:DummyWeights*:*LogitRows*:Sampler*:SdpaGroups*:Scheduler*:StepSchedule*:BlockPool*:PagedKVCache*' > $OUT/gpu_tests.txt 2>&1
tail -3 $OUT/gpu_tests.txt; grep -E "^\[  FAILED" $OUT/gpu_tests.txt | head
for n in 128 256 512; do
  /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
    -n $n --input-len 512 --output-len 128 --mem-fraction 0.9 --modes batchmax --kv-budgets 512 --chunk 512 \
    --schedule auto --out $OUT/dec_n$n.json > $OUT/dec_n$n.log 2>&1
done
python3 - <<'P'
import json,os
for n in (128,256,512):
    r=json.load(open(os.environ['OUT']+f'/dec_n{n}.json'))[0]
    print(n, 'decode-only %.2f s / %d steps = %.2f ms a step, %.1f us a row'%(r['decode_only_s'],r['decode_steps'],1e3*r['decode_only_s']/max(r['decode_steps'],1),1e6*r['decode_only_s']/max(r['decode_steps'],1)/n), 'GB/s %.0f'%r['decode_gbps'])
P
for s in auto decode-first; do SCHEDULE=$s STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 TAG=_bm_$s bench/device/run_throughput.sh /tmp/b 2>&1 | tail -3 | head -1; grep "^requests" $OUT/w_full_bm_$s.log; done
SCHEDULE=decode-first STAGES=full FULL_MODES=full FULL_BUDGETS=512 TAG=_full_decode-first bench/device/run_throughput.sh /tmp/b 2>&1 | tail -3 | head -1; grep "^requests" $OUT/w_full_full_decode-first.log
cd $REAL_OUT && tar czf call3.tgz r && rm -rf r && ls -la
