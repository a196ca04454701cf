#!/usr/bin/env bash
# s19 call 4: W-limited batchmax 512 (n=128, so its tail is a large part) auto vs decode-first;
# W-full full+batchmax with auto again (repeat of call 3)
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
rm -rf /tmp/b; cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
for s in auto decode-first; do
  mkdir -p $OUT/lim_$s
  OUT=$OUT/lim_$s SCHEDULE=$s STAGES=limited REQ_LIMITED=128 LIMITED_MODES=batchmax LIMITED_BUDGETS=512 bench/device/run_throughput.sh /tmp/b > $OUT/lim_$s/run.log 2>&1
  echo "== limited $s"; grep -hE "^(full|batchmax) |^requests" $OUT/lim_$s/run.log | head -4
done
mkdir -p $OUT/wfull_auto
OUT=$OUT/wfull_auto SCHEDULE=auto STAGES=full FULL_MODES=full,batchmax FULL_BUDGETS=512 bench/device/run_throughput.sh /tmp/b > $OUT/wfull_auto/run.log 2>&1
echo "== wfull auto"; grep -hE "^(full|batchmax) |^requests" $OUT/wfull_auto/run.log | head -6
cd $REAL_OUT && tar czf call4.tgz r && rm -rf r && ls -la
