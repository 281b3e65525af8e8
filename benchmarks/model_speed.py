"""A model's decode and prefill speed on the real engine, one sequence at a time.

Drives `backends.vllm_engine.VLLMEngine` in this process (run it under `taskset -c N` to
measure one core; torch's thread count is set to the cores it may use) with synthetic
prompts: decode = tokens/s of one sequence decoding 128 tokens (the steps after its
prefill), prefill = tokens/s of the step that reads a 500-token prompt (prefix cache reset
before each). Prints the best of `--repeats` runs and every run.

    taskset -c 0 python benchmarks/model_speed.py --model smollm2
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="a model name (tiny, smollm2) or a model folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=500, help="prompt tokens of the prefill measurement")
    ap.add_argument("--decode", type=int, default=128, help="tokens decoded in the decode measurement")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import torch

    from backends.models import resolve_model
    from backends.vllm_engine import VLLMEngine
    from ragraph.work import GenStep, GenTask

    cores = len(os.sched_getaffinity(0))
    engine = VLLMEngine(resolve_model(args.model, print), max_model_len=2048, kv_cache_gib=1,
                        max_num_batched_tokens=2048)
    torch._C.set_num_threads(cores)  # vLLM-CPU makes torch.set_num_threads a no-op once started

    def step_times(task: GenTask) -> list[float]:
        engine.apply(GenStep(admit=(task,)))
        times = []
        while engine.has_unfinished():
            t = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t)
        engine.reset_prefix_cache()
        return times

    step_times(GenTask(("warm-up", 0), args.prompt, 8, "", 0))
    decode, prefill = [], []
    for i in range(args.repeats):
        decode.append(args.decode / sum(step_times(GenTask(("decode", i), 16, args.decode + 1, "", 0))[1:]))
        prefill.append(args.prompt / step_times(GenTask(("prefill", i), args.prompt, 1, "", 0))[0])
    engine.close()
    print(f"{args.model} on {cores} core(s), load average {os.getloadavg()[0]:.1f}: decode {max(decode):.1f}"
          f" tokens/s (one sequence; runs {[round(x, 1) for x in decode]}), prefill {max(prefill):.0f} tokens/s"
          f" ({args.prompt}-token prompt; runs {[round(x) for x in prefill]})")


if __name__ == "__main__":
    main()
