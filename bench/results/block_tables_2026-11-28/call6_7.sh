#!/usr/bin/env bash
# s19 calls 6 and 7: SmolLM2-135M-Instruct on the GPU (bench/device/smollm2_on_gpu.sh).
# The model travelled in four parts on a warm machine (split -b 36M, then the third part
# split -b 11M): three calls each copied one part to /tmp/m (carry .devmodel/smol.part.X),
# then call 6 (carry .devmodel/smol.part.ac.ab and .devslim: batchmax, tests, lib at 7a02a62):
cat /tmp/m/smol.part.aa /tmp/m/smol.part.ab /tmp/m/smol.part.ac.aa .devmodel/smol.part.ac.ab > /tmp/m/smol.gguf && sha256sum /tmp/m/smol.gguf
rm -rf /tmp/b && cp -r .devslim /tmp/b
export LD_LIBRARY_PATH=/tmp/b/lib:$(python3 -c 'import nvidia.cudnn,os;print(os.path.join(nvidia.cudnn.__path__[0],"lib"))')
mkdir -p $OUT/r && OUT=$OUT/r timeout 400 bench/device/smollm2_on_gpu.sh /tmp/b /tmp/m/smol.gguf
# Call 7: the same with tests/batchmax_tests rebuilt after the test fix (smollm2_block_bytes
# counts the 8 bytes of table space a block on CUDA), then the two admission tests with
# BATCHMAX_CUDA_BLOCK_TABLES=0:
BATCHMAX_MODEL=/tmp/m/smol.gguf BATCHMAX_TEST_BACKEND=cuda BATCHMAX_CUDA_BLOCK_TABLES=0 /tmp/b/tests/batchmax_tests --gtest_filter='KVCompression.Admission*:KVCompression.RequestThat*'
