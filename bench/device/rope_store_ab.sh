#!/usr/bin/env bash
# On a GPU machine: the fused rope + KV store (Backend::rope_kv_store) off and on, in one
# call (BATCHMAX_CUDA_FUSE_ROPE_STORE=0 runs rope and kv_store as two launches); the
# stages of switch_ab.sh (decode-bound, W-full, P-only).
# usage: bench/device/rope_store_ab.sh BIN_DIR   (batchmax and lib/ there); writes to $OUT.
# env: STAGES ("decode wfull prefill"), COMMIT.
DEFAULT_OUT=rope_store_out exec "$(dirname "$0")/switch_ab.sh" "${1:?bin dir}" BATCHMAX_CUDA_FUSE_ROPE_STORE fuse
