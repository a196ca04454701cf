// Makes the CUDA backend available to engine-level tests in CUDA builds, so the same
// golden tests run on the GPU with BATCHMAX_TEST_BACKEND=cuda.
#ifdef BATCHMAX_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"

namespace {
const bool registered = [] {
  batchmax::register_cuda_backend();
  return true;
}();
}  // namespace
#endif
