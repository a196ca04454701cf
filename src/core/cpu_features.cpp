#include "core/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace batchmax {

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures c;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    c.avx2 = __builtin_cpu_supports("avx2");
    c.fma = __builtin_cpu_supports("fma");
    // CPUID leaf 1, ECX bit 29: clang 14 does not know "f16c" in __builtin_cpu_supports.
    unsigned a = 0, b = 0, cx = 0, d = 0;
    c.f16c = __get_cpuid(1, &a, &b, &cx, &d) && (cx & bit_F16C);
#endif
    return c;
  }();
  return f;
}

}  // namespace batchmax
