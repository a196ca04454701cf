#!/usr/bin/env python3
"""Per-step time by kind of work from kernel_trace.cpp summaries (trace_run.sh's files).

usage: bench/device/trace_groups.py trace_*.txt

A step is one argmax launch (one per forward of a greedy run). Where the summary has the
exclusive column (the time after the previous record of the stream ended), it is used:
kernels launched with programmatic dependent launch wait inside while their predecessor
runs, and their total counts that wait. Copies run on the copy engines, beside the SMs.
"""
import re
import sys

GROUPS = [  # (name, substrings of the kernel name), first match wins
    # matMul_pointwise: cuDNN's gate product with the swiglu fused (cudnn_swiglu.h)
    ("products (cuBLASLt; gate/up + swiglu)", ["nvjet", "splitKreduce", "gate_up_swiglu", "matMul_pointwise"]),
    # flash_kernel<HD, WM, ...>: WM = 1 is the decode shape (any tile), 4 and 8 prefill.
    ("decode attention", [f"flash_kernel<{hd}, 1," for hd in (64, 96, 128)] + ["flash_combine"]),
    ("prefill attention (cuDNN, K/V gather; ours)",
     ["cudnn", "sdpa_gather", "stats_to_lse"] + [f"flash_kernel<{hd}, {wm}," for hd in (64, 96, 128) for wm in (4, 8)]),
    ("swiglu", ["SwigluOp"]),
    ("add+norm, norm", ["rms_norm"]),  # add_rms_norm; rms_norm after a product that added
                                       # into the residual (matmul_add_rms_norm)
    ("rope + kv store", ["rope_kv_store"]),
    ("scores", ["flash_scores", "gather_score_rows"]),
    ("eviction", ["evict_kernel"]),
    ("(copies to the GPU, copy engine)", ["memcpy HtoD"]),
]


def summarise(path):
    lines = open(path).read().split("\n")
    window = float(re.search(r"window ([0-9.]+) s", lines[0]).group(1)) * 1e3
    busy = float(re.search(r"busy ([0-9.]+)%", lines[0]).group(1))
    exclusive = any("excl ms" in l for l in lines[1:3])
    idle = next((l for l in lines[1:3] if l.startswith("idle intervals")), None)
    sums, steps = {}, None
    for line in lines[2:]:
        if line.startswith("timeline"):
            break
        if not re.match(r"^ +\d+ ", line):
            continue
        p = line.split()
        ms = float(p[4]) if exclusive else float(p[1])
        name = " ".join(p[6:] if exclusive else p[4:])
        if "argmax_kernel" in name:
            steps = int(p[0])
        group = next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")
        sums[group] = sums.get(group, 0.0) + ms
    if not steps:
        sys.exit(f"{path}: no argmax launches (not a greedy run?)")
    print(f"{path}: {steps} steps in {window / 1e3:.0f} s = {window / steps:.2f} ms/step, GPU busy {busy}%"
          + ("" if exclusive else " (totals: PDL kernels include their waits)"))
    for group, ms in sorted(sums.items(), key=lambda x: -x[1]):
        print(f"  {group:45s} {ms / steps:7.2f} ms/step {100 * ms / window:5.1f}%")
    print(f"  {'idle (no kernel, copy or memset)':45s} {(100 - busy) / 100 * window / steps:7.2f} ms/step {100 - busy:5.1f}%")
    if idle:  # per bin: intervals and ms per step
        bins = re.findall(r"\[([0-9.]+), (\w+) us\) (\d+) = ([0-9.]+) ms", idle)
        print("    idle by interval length (us): " + ", ".join(
            f"{lo}-{hi}: {int(n) / steps:.1f}x {float(ms) / steps:.3f} ms" for lo, hi, n, ms in bins))


for f in sys.argv[1:]:
    summarise(f)
