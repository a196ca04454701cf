#!/usr/bin/env bash
# s18 call 4: why decode attention over 512 sequences is slow (27.8 ms a step, ~1.3 TB/s):
# same bytes with fewer items, fewer bytes with the same items, other tiles and splits
set -u
REAL_OUT=$OUT; export OUT=$OUT/r; mkdir -p $OUT
cp -r .devwork /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
C=$(cat /tmp/b/COMMIT)
run() {  # tag n in budget [env...]
  local tag=$1 n=$2 in=$3 bud=$4; shift 4
  env BATCHMAX_PROFILE=ops "$@" /tmp/b/batchmax bench --backend cuda --dummy-weights llama3-8b --commit $C --warmup 2 --no-ceilings \
    -n $n --input-len $in --output-len 64 --mem-fraction 0.9 --modes batchmax --kv-budgets $bud --chunk 512 \
    --schedule auto --out $OUT/$tag.json > $OUT/$tag.log 2>&1
  python3 - $OUT/$tag.json $tag <<'P'
import json,sys
r=json.load(open(sys.argv[1]))[0]
print(sys.argv[2], 'decode step %.2f ms'%(1e3*r['decode_only_s']/max(r['decode_steps'],1)), 'peak KV %.1f GiB'%(r['peak_kv_bytes']/2**30))
P
  awk '/^profile decode steps: [0-9]+/{p=1} p&&/attention decode|matmul 28672/{print "   ",$0} /^profile prefill/{p=0}' $OUT/$tag.log | tail -2
}
run a_n512_in512 512 512 512
run b_n512_in256 512 256 512
run c_n128_in2048 128 2048 2048
run d_n512_tile64 512 512 512 BATCHMAX_CUDA_DECODE_TILE=64x2
run e_n512_split2 512 512 512 BATCHMAX_CUDA_DECODE_SPLITS=2
run f_n256_in1024 256 1024 1024
cd $REAL_OUT && tar czf call4.tgz r && rm -rf r && ls -la
