"""Reference attention timings on the device: torch SDPA (FlashAttention-2, cuDNN,
memory-efficient backends) at the shapes batchmax_cuda_bench times for its own prefill
kernel (32 heads, head_dim 128, bf16). Needs torch with CUDA (the lent machines have it).

usage: python3 bench/device/sdpa_reference.py
"""
import torch, time, torch.nn.functional as F
torch.backends.cuda.matmul.allow_tf32 = False
def bench(fn, it=50):
    fn(); torch.cuda.synchronize()
    best = 1e9
    for r in range(5):
        t = time.perf_counter()
        for _ in range(it): fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / it)
    return best
for (b, lq, lk, causal) in [(1, 512, 4096, False), (4, 512, 4096, False), (1, 4096, 4096, True)]:
    q = torch.randn(b, 32, lq, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, 32, lk, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, 32, lk, 128, device="cuda", dtype=torch.bfloat16)
    for name, be in [("flash", torch.nn.attention.SDPBackend.FLASH_ATTENTION), ("cudnn", torch.nn.attention.SDPBackend.CUDNN_ATTENTION), ("efficient", torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with torch.nn.attention.sdpa_kernel(be):
                t = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
            flops = 4 * b * 32 * lq * lk * 128 * (0.5 if causal else 1.0)
            print(f"sdpa {name:9s} b={b} lq={lq} lk={lk} causal={causal}: {t*1e3:.4f} ms {flops/t/1e12:.1f} TFLOP/s")
        except Exception as e:
            print(f"sdpa {name} b={b} lq={lq}: {type(e).__name__} {str(e)[:100]}")
