#!/usr/bin/env bash
# s19 call 3: W-full, full + batchmax in one process, --schedule auto and decode-first (block tables on)
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
rm -rf /tmp/b; cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
for s in auto decode-first; do
  mkdir -p $OUT/$s
  OUT=$OUT/$s SCHEDULE=$s STAGES=full FULL_MODES=full,batchmax FULL_BUDGETS=512 bench/device/run_throughput.sh /tmp/b > $OUT/$s/run.log 2>&1
  echo "== $s"; grep -hE "^requests|tok/s|x full|ratio" $OUT/$s/run.log | head -8
done
cd $REAL_OUT && tar czf call3.tgz r && rm -rf r && ls -la
