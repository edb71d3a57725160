"""Hugging Face transformers' continuous batching on the offline workload of bench/offline.ts.

Usage: python3 bench/baseline_hf.py --model DIR --workload JSON --out JSON [--warmup 8]
The workload file is {"temperature": t, "requests": [[prompt_ids, max_new_tokens], ...]},
written by bench/offline.ts. Every request is added at once to one ContinuousBatchingManager
(the engine behind `generate_batch`; used directly because generate_batch takes a single
max_new_tokens and this workload has one per request), eos disabled (ignore_eos), sampling
at the workload's temperature. A few short requests run first so CUDA graph capture and
kernel compilation stay out of the timed part. Output tokens over wall time go to --out.
"""
import argparse
import json
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig


def run(manager, reqs, tag):
    """Adds every request at once and waits until all are finished; returns token counts."""
    ids = []
    for i, (prompt, max_new) in enumerate(reqs):
        ids.append(manager.add_request(input_ids=prompt, request_id=f"{tag}{i}", max_new_tokens=max_new))
    pending, counts = set(ids), {}
    while pending:
        out = manager.get_result(timeout=1)
        if out is None:
            if not manager.is_running():
                raise RuntimeError("the generation thread stopped")
            continue
        if out.request_id in pending and getattr(out, "error", None):
            raise RuntimeError(f"request {out.request_id} failed: {out.error}")
        if out.request_id in pending and out.is_finished():
            pending.discard(out.request_id)
            counts[out.request_id] = len(out.generated_tokens)
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args()
    w = json.load(open(args.workload))
    reqs = [(list(p), int(m)) for p, m in w["requests"]]
    temperature = float(w["temperature"])

    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16, attn_implementation=args.attn
    ).to("cuda").eval()
    load_s = time.perf_counter() - t_load
    gen = GenerationConfig(
        max_new_tokens=max(m for _, m in reqs),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=None,
        top_p=None,
        pad_token_id=0,
    )
    # Set after construction: -1 is how the manager itself spells "no eos" (ignore_eos).
    gen.eos_token_id = -1
    manager = model.init_continuous_batching(generation_config=gen)
    if hasattr(manager, "warmup"):
        try:
            manager.warmup()
        except Exception as e:  # an older or newer signature: the warm-up run below still runs
            print(f"manager.warmup() failed ({e}); continuing without it")
    manager.start()
    try:
        t_warm = time.perf_counter()
        run(manager, [(p[:128], 8) for p, _ in reqs[: args.warmup]], "warm")
        warm_s = time.perf_counter() - t_warm
        t0 = time.perf_counter()
        counts = run(manager, reqs, "r")
        seconds = time.perf_counter() - t0
    finally:
        manager.stop(block=True, timeout=30)
    out_tokens = sum(counts.values())
    res = {
        "requests": len(reqs),
        "output_tokens": out_tokens,
        "expected_tokens": sum(m for _, m in reqs),
        "seconds": seconds,
        "out_tok_per_s": out_tokens / seconds,
        "load_s": load_s,
        "warmup_s": warm_s,
        "attn": args.attn,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }
    json.dump(res, open(args.out, "w"))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
