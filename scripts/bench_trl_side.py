"""TRL's half of scripts/bench-vs-trl.sh: trains the given model folder on the given
pre-tokenized rows with TRL's KTOTrainer (fp32, CPU, AdamW, a separate reference, no gradient
checkpointing), times every optimizer step, and prints one JSON object: median seconds per step
after the warm-up, tokens/s, peak RSS, and torch's fp32 sgemm peak on this machine.

TRL 1.16 tokenizes text itself; rows here are already token ids, so `_prepare_dataset` is
overridden to only add TRL's KL completions (the +1 rotation in chunks of the batch size).
Everything from the collator on is stock TRL.

    python scripts/bench_trl_side.py MODEL_DIR DATA.jsonl STEPS WARMUP THREADS [--device cuda]
        [--bf16] [--batch N] [--learning-rate LR]

scripts/gpu-check.sh runs it on the GPU (`--device cuda`, TRL's bf16 mixed precision with
`--bf16`); there the torch sgemm figure is left out and torch's peak reserved GPU memory is added.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import KTOConfig, KTOTrainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("data_path")
parser.add_argument("steps", type=int)
parser.add_argument("warmup", type=int)
parser.add_argument("threads", type=int)
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--bf16", action="store_true")
parser.add_argument("--batch", type=int, default=4)
parser.add_argument("--learning-rate", type=float, default=1e-5)
cli = parser.parse_args()
model_dir, data_path, steps, warmup, threads = cli.model_dir, cli.data_path, cli.steps, cli.warmup, cli.threads
torch.set_num_threads(threads)
rows = [json.loads(line) for line in open(data_path)]
batch = cli.batch
cuda = cli.device == "cuda"
if cuda:
    # fp32 means fp32, as kto's: no TF32 in the matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class Tokenized(KTOTrainer):
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        def rotate(chunk):
            c = chunk["completion_ids"]
            chunk["KL_completion_ids"] = c[-1:] + c[:-1]
            return chunk

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


times = []


class StepClock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - self.t)


with tempfile.TemporaryDirectory() as out:
    config = KTOConfig(
        output_dir=out, model_init_kwargs={"dtype": "float32"}, bf16=cli.bf16, fp16=False, use_cpu=not cuda,
        gradient_checkpointing=False, max_length=None, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, learning_rate=cli.learning_rate, max_steps=warmup + steps, optim="adamw_torch",
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )
    trainer = Tokenized(model=model_dir, args=config, train_dataset=Dataset.from_list(rows),
                        processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.add_callback(StepClock())
    trainer.train()

tokens = batch * (len(rows[0]["prompt_ids"]) + len(rows[0]["completion_ids"]))
median = statistics.median(times[warmup:])
result = {
    "seconds_per_step": median,
    "tokens_per_s": tokens / median,
    "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "versions": {"torch": torch.__version__, "trl": __import__("trl").__version__},
}
if cuda:
    result["torch_peak_reserved_gpu_mib"] = torch.cuda.max_memory_reserved() / 2**20
else:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        torch.mm(a, b)
    mm = []
    for _ in range(10):
        t = time.perf_counter()
        torch.mm(a, b)
        mm.append(time.perf_counter() - t)
    result["sgemm_peak_gflops"] = 2 * 2048**3 / min(mm) / 1e9
print(json.dumps(result))
