#!/usr/bin/env python3
"""Loads a dms-retrofit export in transformers and prints what it computes, as one JSON
line, for tests/remote_code_test.cpp to compare with the C++ model:
  - with trust_remote_code=True: logits, hard decisions and decision logits on the reference
    tokens, greedy generate() of N tokens from the reference prompt, and the evicting cache's
    peak entries per layer and head and its compression figures;
  - without it: the class transformers builds (the plain base model) and its logits.
Usage: remote_code_check.py EXPORT_DIR REFERENCE.safetensors NEW_TOKENS"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    export, ref_path, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ref = load_file(ref_path)
    m = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32)
    m.eval()
    with torch.no_grad():
        out = m(ref["tokens"])
        gen = m.generate(ref["prompt"], max_new_tokens=new_tokens, do_sample=False)
        plain = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
        plain.eval()
        plain_logits = plain(ref["tokens"]).logits
    stats = m.dms_cache_stats[0]
    print(json.dumps({
        "class": type(m).__name__,
        "logits_max_abs_diff": (out.logits.float() - ref["logits"]).abs().max().item(),
        "decisions_equal": bool(torch.equal(out["decisions"].float(), ref["decisions"])),
        "decision_cr": 1.0 / (1.0 - out["decisions"].float().mean().item()),
        "generated": gen[0, ref["prompt"].shape[1]:].tolist(),
        "peak_entries": stats["peak_entries"],
        "effective_kv_cr": stats["effective_kv_cr"],
        "end_of_sequence_kv_cr": stats["end_of_sequence_kv_cr"],
        "plain_class": type(plain).__name__,
        "plain_logits_max_abs_diff": (plain_logits.float() - ref["plain_logits"]).abs().max().item(),
    }))


if __name__ == "__main__":
    main()
