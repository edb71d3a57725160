"""Peer of bench/attention.ts: PyTorch's scaled_dot_product_attention on the same shapes,
under the cuDNN and the flash backends, timed with CUDA events (median of repeats).

  python3 bench/peers/attention_sdpa.py '<json list of shapes>'

Each shape is {"model", "batch", "q_len", "hq", "hkv", "head_dim", "dtype"} (causal, no
prefix). KV heads are expanded to the query heads (the flash and cuDNN backends are timed on
MHA of the same FLOPs). Prints one JSON object {model: {"cudnn_tflops", "flash_tflops"}}.
"""
import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F


def time_ms(fn, reps=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    shapes = json.loads(sys.argv[1])
    out = {}
    for s in shapes:
        dt = torch.bfloat16 if s.get("dtype", "bf16") == "bf16" else torch.float16
        b, n, hq, hkv, d = s["batch"], s["q_len"], s["hq"], s["hkv"], s["head_dim"]
        g = torch.Generator(device="cuda").manual_seed(1)
        q = torch.randn(b, hq, n, d, device="cuda", dtype=dt, generator=g)
        k = torch.randn(b, hkv, n, d, device="cuda", dtype=dt, generator=g)
        v = torch.randn(b, hkv, n, d, device="cuda", dtype=dt, generator=g)
        k = k.repeat_interleave(hq // hkv, dim=1).contiguous()
        v = v.repeat_interleave(hq // hkv, dim=1).contiguous()
        flops = 4.0 * b * hq * d * (n * (n + 1) / 2)
        rec = {}
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                rec[f"{name}_tflops"] = flops / (ms / 1e3) / 1e12
            except Exception as e:  # a backend that refuses the shape is reported, not fatal
                print(f"{name} on {s['model']}: {e}", file=sys.stderr)
                rec[f"{name}_tflops"] = None
        out[s["model"]] = rec
    print(json.dumps(out))


if __name__ == "__main__":
    main()
