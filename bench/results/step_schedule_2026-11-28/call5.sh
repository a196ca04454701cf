#!/usr/bin/env bash
# s18 call 5: kernel timeline of decode steps over 512 sequences (GPU-bound or host-bound?);
# W-full batchmax with the decode tile forced to 64x2, auto and decode-first
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
C=$(cat /tmp/b/COMMIT)
for t in auto 64x2; do
LD_PRELOAD=/tmp/b/lib/libbatchmax_kernel_trace.so BMX_TRACE_OUT=$OUT/trace_dec512_$t.txt BMX_TRACE_SKIP_S=12 BMX_TRACE_LEN_S=3 BMX_TRACE_DUMP=300 \
  BATCHMAX_CUDA_DECODE_TILE=$t /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
  -n 512 --input-len 512 --output-len 256 --mem-fraction 0.9 --modes batchmax --kv-budgets 512 --chunk 512 \
  --schedule auto --out $OUT/trace_dec512_$t.json > $OUT/trace_dec512_$t.log 2>&1
grep "^requests" $OUT/trace_dec512_$t.log; head -n 16 $OUT/trace_dec512_$t.txt | cut -c1-150
done
for s in auto decode-first; do BATCHMAX_CUDA_DECODE_TILE=64x2 SCHEDULE=$s STAGES=full FULL_MODES=batchmax FULL_BUDGETS=512 TAG=_bm_${s}_tile64 bench/device/run_throughput.sh /tmp/b 2>&1 | tail -3 | head -1; grep "^requests" $OUT/w_full_bm_${s}_tile64.log; done
cd $REAL_OUT && tar czf call5.tgz r && rm -rf r && ls -la
