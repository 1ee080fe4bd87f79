"""The Python half of scripts/gpu-check.sh: one subcommand per step, each printing one JSON
object on its last line of stdout. `rows` and `measure` need only the standard library; the
others need torch and transformers (and `trl` for the TRL run, which is scripts/bench_trl_side.py).

    python scripts/gpu_check.py rows OUT.jsonl N PROMPT COMPLETION VOCAB
    python scripts/gpu_check.py model CONFIG.json TOKENIZER_DIR OUT_DIR
    python scripts/gpu_check.py logps MODEL_DIR KTO_LOGPS.jsonl DEVICE
    python scripts/gpu_check.py matmul DEVICE N
    python scripts/gpu_check.py measure GPU_INDEX|- -- COMMAND...
    python scripts/gpu_check.py report STEPS_DIR OUT_DIR CPU KTO_DEVICE TORCH_DEVICE BATCH PROMPT COMPLETION WARMUP

`measure` runs COMMAND and reports its wall time, its peak RSS and, given a GPU index, the peak of
that GPU's used memory above what was used before it started (polled every 50 ms through NVML or
nvidia-smi): the same measure for kto on Vulkan and TRL on CUDA, whose allocators differ.
"""
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time

for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")

# Cross-framework tolerance on a sequence's summed log-prob (relative), as the parity tests use.
LOGPS_RTOL = 1e-4


def rows(out, n, prompt, completion, vocab):
    """Random token ids of exact lengths, 3 of 4 rows desirable (as scripts/bench-vs-trl.sh)."""
    rng = random.Random(0)
    with open(out, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt_ids": [rng.randrange(1, vocab) for _ in range(prompt)],
                                "completion_ids": [rng.randrange(1, vocab) for _ in range(completion)],
                                "label": i % 4 != 3}) + "\n")
    return {"rows": n, "prompt": prompt, "completion": completion, "vocab": vocab}


def model(config_path, tokenizer_dir, out):
    """A randomly initialised model of `config_path`'s shape (seed 0), saved in f32 with the
    tokenizer files of `tokenizer_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**json.load(open(config_path)))
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm.save_pretrained(out, safe_serialization=True)
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(os.path.join(tokenizer_dir, name), out)
    return {"parameters": sum(p.numel() for p in lm.parameters()), "out": out}


def logps(model_dir, kto_path, device):
    """Each row's summed completion log-prob (and its KL completion's) under transformers on
    `device` in f32, against `kto logps`'s: the largest relative difference."""
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def summed(prompt, completion):
        ids = torch.tensor([prompt + completion], device=device)
        with torch.no_grad():
            logits = lm(ids).logits[0, len(prompt) - 1:-1].float()
        target = ids[0, len(prompt):]
        return logits.log_softmax(-1).gather(-1, target[:, None]).sum().item()

    worst, worst_abs, n = 0.0, 0.0, 0
    for line in open(kto_path):
        row = json.loads(line)
        pairs = [(row["completion_ids"], row["logps"])]
        if row.get("kl_completion_ids") is not None and row.get("kl_logps") is not None:
            pairs.append((row["kl_completion_ids"], row["kl_logps"]))
        for completion, kto_value in pairs:
            ours = summed(row["prompt_ids"], completion)
            diff = abs(ours - kto_value)
            worst_abs = max(worst_abs, diff)
            worst = max(worst, diff / max(abs(ours), 1e-12))
            n += 1
    return {"sequences": n, "max_rel_diff": worst, "max_abs_diff": worst_abs, "rtol": LOGPS_RTOL,
            "passed": n > 0 and worst <= LOGPS_RTOL, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}


def matmul(device, n):
    """torch's N x N matmul per dtype in TFLOP/s: f32 without and with TF32, bf16, f16."""
    import torch

    out = {}
    for name, dtype, tf32 in [("f32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False), ("f16", torch.float16, False)]:
        if device == "cpu" and name in ("tf32", "f16"):
            continue
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for _ in range(3):
            a @ b
        sync()
        times = []
        for _ in range(10):
            start = time.perf_counter()
            a @ b
            sync()
            times.append(time.perf_counter() - start)
        out[name] = 2 * n**3 / sorted(times)[len(times) // 2] / 1e12
    return {"n": n, "tflops": out}


class GpuMemory:
    """Polls one GPU's used memory; `peak_mib` is the largest reading above the first."""

    def __init__(self, index):
        self.index, self.readings, self.stop = index, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.read = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        except Exception:  # no NVML binding: the command line reads the same counter
            self.read = lambda: float(subprocess.run(
                ["nvidia-smi", f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, check=True).stdout.strip())
        self.baseline = self.read()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.stop.is_set():
            self.readings.append(self.read())
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.thread.join()
        return max(self.readings + [self.baseline]) - self.baseline


def measure(gpu, command):
    memory = GpuMemory(int(gpu)) if gpu != "-" else None
    start = time.perf_counter()
    done = subprocess.run(command)
    wall = time.perf_counter() - start
    out = {"returncode": done.returncode, "wall_s": wall,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if memory is not None:
        out["peak_gpu_mib"] = memory.finish()
    return out


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def report(steps_dir, out_dir, cpu, kdev, tdev, batch, prompt, completion, warmup):
    """gpu-check.json (every step's record and the training table) and gpu-check.md."""
    order = dict.fromkeys(open(os.path.join(steps_dir, "order")).read().split())
    steps = {name: json.load(open(os.path.join(steps_dir, f"{name}.json"))) for name in order}
    tokens = batch * (prompt + completion)
    memory_key = "peak_rss_mib" if cpu else "peak_gpu_mib"
    training = {}
    for name, step in steps.items():
        if step["status"] != "ok" or not name.startswith(("kto-", "trl-")):
            continue
        result = step["result"]
        if name.startswith("kto-"):
            seconds = median(result["summary"]["step_seconds"][warmup:])
            loss = result["summary"]["final"]["loss"]
        else:
            seconds, loss = result["trl"]["seconds_per_step"], result["trl"]["final_loss"]
        training[name] = {"tokens_per_s": tokens / seconds, "seconds_per_step": seconds,
                          "peak_memory_mib": result["measure"][memory_key], "final_loss": loss,
                          "wall_s": result["measure"]["wall_s"]}
    # kto's modes against TRL's run of the same precision (TRL has no bf16-weights: its bf16).
    for name, row in training.items():
        if name.startswith("kto-"):
            trl = training.get("trl-fp32" if name == "kto-fp32" else "trl-bf16")
            if trl:
                row["speed_over_trl"] = row["tokens_per_s"] / trl["tokens_per_s"]
                row["memory_over_trl"] = row["peak_memory_mib"] / trl["peak_memory_mib"]
    summary = {"date": time.strftime("%Y-%m-%d"), "cpu_mode": bool(cpu), "kto_device": kdev, "torch_device": tdev,
               "tokens_per_step": tokens, "memory": "peak RSS" if cpu else "peak GPU memory used above the start",
               "training": training, "steps": steps}
    json.dump(summary, open(os.path.join(out_dir, "gpu-check.json"), "w"), indent=1)

    md = [f"gpu-check {summary['date']}: kto on {kdev}, torch on {tdev}", "",
          "| step | status | figures |", "|---|---|---|"]
    for name, step in steps.items():
        figures = step.get("why", "")
        result = step.get("result")
        if name.startswith("logps-") and result:
            figures = f"{result['sequences']} sequences, max relative difference {result['max_rel_diff']:.2e} (tolerance {result['rtol']:.0e})"
        elif name in training:
            row = training[name]
            figures = (f"{row['tokens_per_s']:.0f} tokens/s, {row['peak_memory_mib']:.0f} MiB, "
                       f"final loss {row['final_loss']:.6f}")
            if "speed_over_trl" in row:
                figures += f", {row['speed_over_trl']:.2f}x TRL's speed, {row['memory_over_trl']:.2f}x its memory"
        elif name == "torch-matmul" and result:
            figures = ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in result["tflops"].items()) + f" (n={result['n']})"
        elif name == "devices" and result:
            parts = []
            for device in result:
                if not device.get("available"):
                    parts.append(f"{device['device']}: unavailable ({device['error']})")
                    continue
                adapter = device.get("adapter") or {}
                rates = ", ".join(f"{k} {v['matmul_gflops'] / 1000:.2f} TFLOP/s" for k, v in device["dtypes"].items()
                                  if v.get("matmul_gflops"))
                on = f" on {adapter['name']} ({adapter['id']})" if adapter else ""
                parts.append(f"{device['device']}{on}: {rates}")
            figures = "; ".join(parts)
        md.append(f"| {name} | {step['status']} | {figures} |")
    open(os.path.join(out_dir, "gpu-check.md"), "w").write("\n".join(md) + "\n")
    return {"written": [os.path.join(out_dir, "gpu-check.json"), os.path.join(out_dir, "gpu-check.md")]}


def main(argv):
    step, args = argv[1], argv[2:]
    if step == "rows":
        result = rows(args[0], *map(int, args[1:5]))
    elif step == "model":
        result = model(*args[:3])
    elif step == "logps":
        result = logps(*args[:3])
    elif step == "matmul":
        result = matmul(args[0], int(args[1]))
    elif step == "measure":
        if len(args) < 3 or args[1] != "--":
            raise SystemExit("usage: gpu_check.py measure GPU_INDEX|- -- COMMAND...")
        result = measure(args[0], args[2:])
    elif step == "report":
        result = report(args[0], args[1], int(args[2]), args[3], args[4], *map(int, args[5:9]))
    else:
        raise SystemExit(f"unknown step {step!r}; see the docstring")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
