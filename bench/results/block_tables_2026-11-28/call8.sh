#!/usr/bin/env bash
# s19 call 8 (7a02a62, defaults): W-limited full + batchmax 512, 512 requests, one process
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
rm -rf /tmp/b; cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
STAGES=limited LIMITED_MODES=full,batchmax LIMITED_BUDGETS=512 bench/device/run_throughput.sh /tmp/b > $OUT/run.log 2>&1
grep -hE "^(full|batchmax) |^requests" $OUT/run.log | head -6
cd $REAL_OUT && tar czf call8.tgz r && rm -rf r && ls -la
