"""Training-step throughput of kiln's Transformer against transformers' Olmo2ForCausalLM on one config.

A step is forward, fp32 cross-entropy, backward and an AdamW step. The two models alternate step by step in
one process (after a warm-up), so drifts in machine speed hit both alike; we report median tokens/s.
bf16 runs under `torch.autocast("cpu", dtype=torch.bfloat16)` with fp32 master weights, for both.

    python benchmarks/bench_model_vs_hf.py [--steps 10] [--warmup 2] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model import ModelConfig, Transformer

VOCAB, D_MODEL, LAYERS, HEADS, D_FF = 32000, 512, 8, 8, 1536
SEQ, BATCH = 512, 4


def kiln_model() -> nn.Module:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=LAYERS, n_heads=HEADS, d_ff=D_FF,
                      max_seq_len=SEQ, norm="rmsnorm", block="reordered", qk_norm="full", mlp="swiglu",
                      tie_embeddings=False)
    return Transformer(cfg)


def hf_model() -> nn.Module:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    cfg = Olmo2Config(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=SEQ,
                      rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
                      tie_word_embeddings=False, use_cache=False, eos_token_id=None, attn_implementation="sdpa")
    return Olmo2ForCausalLM(cfg)


def make_step(forward: Callable[[Tensor], Tensor], model: nn.Module, bf16: bool) -> Callable[[Tensor], float]:
    """One training step on (B, T+1) tokens; returns its wall time in seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

    def step(tokens: Tensor) -> float:
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            logits = forward(tokens[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def bench(precision: str, steps: int, warmup: int) -> tuple[float, float, float]:
    """Median tokens/s of kiln and of HF, alternating their steps, and the median of the per-step ratios."""
    torch.manual_seed(0)
    kiln, hf = kiln_model().train(), hf_model().train()
    bf16 = precision == "bf16"
    runners = {
        "kiln": make_step(kiln, kiln, bf16),
        "hf": make_step(lambda ids: hf(input_ids=ids).logits, hf, bf16),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1))
        order = list(runners) if i % 2 == 0 else list(reversed(runners))
        for name in order:
            elapsed = runners[name](tokens)
            if i >= warmup:
                times[name].append(elapsed)
    tokens_per_step = BATCH * SEQ
    paired = statistics.median(hf_time / kiln_time for kiln_time, hf_time in zip(times["kiln"], times["hf"]))
    return tokens_per_step / statistics.median(times["kiln"]), tokens_per_step / statistics.median(times["hf"]), paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; d_model {D_MODEL}, {LAYERS} layers, {HEADS} heads, "
          f"d_ff {D_FF}, vocab {VOCAB}, batch {BATCH} x seq {SEQ}; median of {args.steps} steps")
    for precision in args.precision:
        kiln_tps, hf_tps, paired = bench(precision, args.steps, args.warmup)
        print(f"{precision}: kiln {kiln_tps:8.0f} tok/s  HF {hf_tps:8.0f} tok/s  kiln/HF {kiln_tps / hf_tps:.2f}x "
              f"(median of per-step ratios {paired:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
