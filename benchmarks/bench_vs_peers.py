"""Training-step speed and memory of Kiln against Hugging Face's Olmo2 and OLMo-core, side by side.

The three models are built at the same shape and must have the same parameter count (checked). A step is forward,
loss, backward, gradient clipping at 1.0 and AdamW (torch's, the same for all three), on a fresh random batch. The
systems alternate step by step in one process (the order flips every round), so drifts in machine speed hit all
alike; after `--warmup` rounds we report the median tokens/s of `--steps` rounds and the median of Kiln's per-round
ratios. Each system computes its loss its own way: Kiln as its trainer does (cross-entropy + z-loss 1e-5, from
whole logits or a block of rows at a time, `kiln.train.loss.loss_chunk_rows`; `kiln-whole` always from whole
logits, Kiln before `trainer.loss_chunk`), OLMo-core through its LM head
(cross-entropy + z-loss 1e-5), Hugging Face from its fp32 logits (cross-entropy). Peak memory is measured apart,
per system, as the peak RSS (VmHWM) of a fresh process running two steps (CPU), or `torch.cuda.max_memory_allocated`.
OLMo-core (`pip install ai2-olmo-core`) is skipped when it is not installed.

    python benchmarks/bench_vs_peers.py [--shapes a b c] [--steps 8] [--precision fp32 bf16] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model import ModelConfig, Transformer
from kiln.train.loss import chunked_loss_terms, loss_chunk_rows, loss_terms

Z_LOSS = 1e-5


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int  # OLMo-core's rule: int(8 d / 3) (x multiplier) rounded up to a multiple of 256
    vocab: int
    seq: int
    batch: int
    ff_multiplier: float | None = None


SHAPES = {
    "a": Shape(512, 8, 8, 8, 1536, 32_000, 512, 4),
    "b": Shape(768, 12, 8, 2, 2048, 100_352, 1024, 1),  # grouped-query attention, OLMo 2's vocabulary
    "c": Shape(768, 12, 12, 12, 3072, 100_352, 2048, 1, ff_multiplier=1.5),  # OLMo-core's olmo2_190M
    "tiny": Shape(64, 2, 4, 2, 256, 1024, 32, 2),  # seconds: to try the script
}


def kiln_model(s: Shape) -> nn.Module:
    return Transformer(ModelConfig(vocab_size=s.vocab, d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads,
                                   n_kv_heads=s.n_kv_heads, d_ff=s.d_ff, max_seq_len=s.seq, norm="rmsnorm",
                                   block="reordered", qk_norm="full", mlp="swiglu", tie_embeddings=False))


def hf_model(s: Shape) -> nn.Module:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(
        vocab_size=s.vocab, hidden_size=s.d_model, intermediate_size=s.d_ff, num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads, num_key_value_heads=s.n_kv_heads, max_position_embeddings=s.seq,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500_000.0},
        tie_word_embeddings=False, use_cache=False, eos_token_id=None, attn_implementation="sdpa"))


def olmo_core_model(s: Shape) -> nn.Module:
    from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig

    cfg = TransformerConfig.llama_like(d_model=s.d_model, vocab_size=s.vocab, n_layers=s.n_layers, n_heads=s.n_heads,
                                       n_kv_heads=s.n_kv_heads, qk_norm=True, layer_norm_eps=1e-6,
                                       hidden_size_multiplier=s.ff_multiplier,
                                       block_name=TransformerBlockType.reordered_norm)
    model = cfg.build(init_device="cpu")
    model.init_weights(max_seq_len=s.seq, device=torch.device("cpu"))
    return model


def kiln_loss(model: nn.Module, s: Shape, setting: int | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    chunk = loss_chunk_rows(setting, model.cfg.padded_vocab_size, s.batch * s.seq)

    def loss(ids: Tensor, labels: Tensor) -> Tensor:
        n = labels.numel()
        if chunk:
            return sum(model(ids, head_fn=lambda h, w: chunked_loss_terms(h, w, labels, n, Z_LOSS, chunk))[:2])
        return sum(loss_terms(model(ids), labels, n, Z_LOSS))
    return loss


def hf_loss(model: nn.Module, s: Shape) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda ids, labels: F.cross_entropy(model(input_ids=ids).logits.float().flatten(0, 1), labels.flatten())


def olmo_core_loss(model: nn.Module, s: Shape) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda ids, labels: model(ids, labels=labels, z_loss_multiplier=Z_LOSS).loss


def kiln_whole_logits_loss(model: nn.Module, s: Shape) -> Callable[[Tensor, Tensor], Tensor]:
    return kiln_loss(model, s, setting=0)


SYSTEMS = {"kiln": (kiln_model, kiln_loss), "kiln-whole": (kiln_model, kiln_whole_logits_loss),
           "hf": (hf_model, hf_loss), "olmo-core": (olmo_core_model, olmo_core_loss)}


def available(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            if name == "olmo-core":
                import olmo_core  # noqa: F401
            out.append(name)
        except ImportError:
            print(f"# {name} is not installed: skipped", flush=True)
    return out


def make_step(name: str, s: Shape, bf16: bool, device: str) -> tuple[Callable[[Tensor], float], int]:
    """(one training step on (B, T+1) tokens returning its seconds, the model's parameter count)."""
    build, loss_of = SYSTEMS[name]
    torch.manual_seed(0)
    model = build(s).to(device).train()
    loss_fn = loss_of(model, s)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)

    def step(tokens: Tensor) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return step, sum(p.numel() for p in model.parameters())


def batch(s: Shape, device: str) -> Tensor:
    return torch.randint(0, s.vocab, (s.batch, s.seq + 1), device=device)


def time_shape(s: Shape, names: list[str], bf16: bool, steps: int, warmup: int, device: str) -> dict:
    runners, params = {}, {}
    for name in names:
        runners[name], params[name] = make_step(name, s, bf16, device)
    if len(set(params.values())) != 1:
        raise SystemExit(f"parameter counts differ: {params}; the shapes are not the same model")
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + steps):
        tokens = batch(s, device)
        for name in names if i % 2 == 0 else reversed(names):
            elapsed = runners[name](tokens)
            if i >= warmup:
                times[name].append(elapsed)
    tokens = s.batch * s.seq
    out = {"params": next(iter(params.values())), "tokens_per_s": {n: tokens / statistics.median(t)
                                                                  for n, t in times.items()}}
    out["kiln_ratio"] = {n: statistics.median(b / a for a, b in zip(times["kiln"], times[n], strict=True))
                         for n in names if n != "kiln"}
    return out


def peak_memory_mib(shape: str, name: str, bf16: bool, device: str, batch_size: int | None = None) -> float:
    """Peak memory of two steps of one system, in a fresh process (CPU RSS cannot be told apart in one)."""
    code = (f"import benchmarks.bench_vs_peers as b; "
            f"print(b.measure_one({shape!r}, {name!r}, {bf16}, {device!r}, {batch_size!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"memory run of {name} at shape {shape} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.split()[-1])


def measure_one(shape: str, name: str, bf16: bool, device: str, batch_size: int | None = None) -> float:
    from benchmarks.bench_loss_chunk import vm_hwm_kib

    s = with_batch(SHAPES[shape], batch_size)
    step, _ = make_step(name, s, bf16, device)
    for _ in range(2):
        step(batch(s, device))
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return vm_hwm_kib() / 1024


def with_batch(s: Shape, batch_size: int | None) -> Shape:
    return s if batch_size is None else dataclasses.replace(s, batch=batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["a", "b", "c"], choices=list(SHAPES))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--steps", type=int, default=8, help="timed rounds (each system one step per round)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--no-memory", action="store_true", help="skip the per-system peak memory runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="sequences per step, instead of each shape's own")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    names = available(["kiln", *[n for n in args.systems if n != "kiln"]])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}; median of {args.steps} "
          f"rounds after {args.warmup}", flush=True)
    print("| shape (batch x seq) | precision | params | " + " | ".join(f"{n} tok/s" for n in names)
          + " | " + " | ".join(f"kiln vs {n}" for n in names[1:]) + " | peak MiB (" + ", ".join(names) + ") |")
    print("|---" * (3 + 2 * len(names)) + "|---|")
    results = []
    for precision in args.precision:
        for key in args.shapes:
            bf16 = precision == "bf16"
            shape = with_batch(SHAPES[key], args.batch)
            r = time_shape(shape, names, bf16, args.steps, args.warmup, args.device)
            r["memory_mib"] = {} if args.no_memory else {n: peak_memory_mib(key, n, bf16, args.device, args.batch)
                                                          for n in names}
            results.append({"shape": key, **asdict(shape), "precision": precision, **r})
            speeds = " | ".join(f"{r['tokens_per_s'][n]:.0f}" for n in names)
            ratios = " | ".join(f"{r['kiln_ratio'][n]:.2f}x" for n in names[1:])
            memory = ", ".join(f"{r['memory_mib'][n]:.0f}" for n in names) if r["memory_mib"] else "-"
            print(f"| {key} ({shape.batch} x {shape.seq}) | {precision} | {r['params'] / 1e6:.1f}M | {speeds} "
                  f"| {ratios} | {memory} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
