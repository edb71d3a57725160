"""Reference logits from Hugging Face transformers for bench/fidelity.ts.

Usage: python3 bench/hf_logits.py MODEL_DIR IDS_JSON OURS_F32 OUT_JSON [--dtype float32|bfloat16]
Runs the token ids through AutoModelForCausalLM (on the GPU when there is one) in one
forward pass and compares with our logits ([n, vocab] float32, raw little-endian): the
relative L2 error ||ours_p - hf_p|| / ||hf_p|| at every position p goes to OUT_JSON.
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, ids_path, ours_path, out_path = sys.argv[1:5]
    dtype = torch.float32
    if "--dtype" in sys.argv and sys.argv[sys.argv.index("--dtype") + 1] == "bfloat16":
        dtype = torch.bfloat16
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ids = json.load(open(ids_path))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(dev).eval()
    with torch.no_grad():
        hf = model(torch.tensor([ids], device=dev)).logits[0].float()
    vocab = hf.shape[-1]
    ours = torch.from_numpy(np.fromfile(ours_path, dtype=np.float32).reshape(-1, vocab)).to(dev)
    n = min(ours.shape[0], hf.shape[0])
    rel = (ours[:n] - hf[:n]).norm(dim=-1) / hf[:n].norm(dim=-1)
    tgt = torch.tensor(ids[1:n], device=dev)
    lp_ours = torch.log_softmax(ours[: n - 1], -1).gather(1, tgt[:, None])[:, 0]
    lp_hf = torch.log_softmax(hf[: n - 1], -1).gather(1, tgt[:, None])[:, 0]
    agree = (ours[:n].argmax(-1) == hf[:n].argmax(-1)).float().mean().item()
    res = {
        "positions": n,
        "max_rel_l2": rel.max().item(),
        "mean_rel_l2": rel.mean().item(),
        "argmax_agreement": agree,
        "max_prompt_logprob_abs_diff": (lp_ours - lp_hf).abs().max().item(),
        "hf_dtype": str(dtype).replace("torch.", ""),
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }
    json.dump(res, open(out_path, "w"))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
