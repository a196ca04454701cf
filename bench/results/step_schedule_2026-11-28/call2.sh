#!/usr/bin/env bash
# s18 call 2: where a decode step of 512 sequences goes (W-full batchmax's tail under
# --schedule auto took 40.7 ms a step): sections (host time between steps) and ops, and
# plain runs at 128 / 256 / 512 sequences
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee $OUT/gpu.txt
C=$(cat /tmp/b/COMMIT)
run() {  # tag n [env...]
  local tag=$1 n=$2; shift 2
  env "$@" /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
    -n $n --input-len 512 --output-len 128 --mem-fraction 0.9 --modes batchmax --kv-budgets 512 --chunk 512 \
    --schedule auto --out $OUT/dec_$tag.json > $OUT/dec_$tag.log 2>&1
  echo "== $tag"; grep -E "^batchmax|^requests" $OUT/dec_$tag.log | head -3
}
run n512_sections 512 BATCHMAX_PROFILE=1
grep -A40 "^profile" $OUT/dec_n512_sections.log | head -60
run n512_ops 512 BATCHMAX_PROFILE=ops
grep -A60 "^profile" $OUT/dec_n512_ops.log | head -80
for n in 128 256 512; do run n$n $n; done
python3 - <<'P'
import json,os
for n in (128,256,512):
    r=json.load(open(os.environ['OUT']+f'/dec_n{n}.json'))[0]
    print(n, 'decode-only %.2f s / %d steps = %.2f ms a step, %.1f us a row'%(r['decode_only_s'],r['decode_steps'],1e3*r['decode_only_s']/max(r['decode_steps'],1),1e6*r['decode_only_s']/max(r['decode_steps'],1)/n), 'GB/s %.0f'%r['decode_gbps'])
P
cd $REAL_OUT && tar czf call2.tgz r && rm -rf r && ls -la
