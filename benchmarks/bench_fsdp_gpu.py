"""FSDP2 training throughput and MFU of `olmo2-1b` at sequence length 4096 in bf16, on one GPU (or several).

    python benchmarks/bench_fsdp_gpu.py                               # one GPU: a process group of one
    torchrun --nproc-per-node=8 benchmarks/bench_fsdp_gpu.py          # every GPU of a node
    python benchmarks/bench_fsdp_gpu.py --device cpu --preset olmo2-tiny --seq-len 256 --steps 2   # dry run

Full trainer steps (loss, z-loss, clipping, AdamW) through the same `build_run` as `kiln train`, on the built-in
corpus with the vocabulary padded to OLMo 2's 100,278 ids so the embedding and head cost what they do in the real
model. MFU uses the model's FLOPs per token (6N plus attention, `kiln.model.config.flops_per_token`) against the
GPU's dense bf16 peak (989 TFLOP/s for an H100 SXM or H200). For reference, the OLMo-core README reports about
55,000 tokens/s per H100 for its 1B model in bf16; the target here is at least 50% MFU on an H200.
"""

from __future__ import annotations

import argparse
import json

from dp_timing import time_training

from kiln.train.config import load_config

OLMO2_VOCAB = 100_278


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="olmo2-1b")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per micro-batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of this script")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--strategy", choices=["fsdp", "hsdp", "ddp"], default="fsdp")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile of blocks")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward")
    parser.add_argument("--loss-chunk", default="auto",
                        help="rows per block of the chunked loss; 0 = whole logits; auto = kiln's default")
    parser.add_argument("--fused-adamw", action="store_true", help="torch's fused AdamW kernel (optim.fused)")
    parser.add_argument("--no-reshard", dest="reshard", action="store_false",
                        help="keep gathered weights from forward to backward (more memory, less communication)")
    args = parser.parse_args()
    args.compile = args.compile and args.device != "cpu"  # a CPU dry run skips the compiler

    cfg = load_config(None, {
        "model": {"preset": args.preset, "vocab_size": OLMO2_VOCAB},
        "data": {"seq_len": args.seq_len, "val_fraction": 0.01, "repeat_filter": False},
        "trainer": {"device": args.device, "precision": args.precision, "micro_batch_size": args.micro_batch,
                    "compile": args.compile, "activation_checkpointing": args.activation_checkpointing,
                    "loss_chunk": None if args.loss_chunk == "auto" else int(args.loss_chunk)},
        "optim": {"fused": args.fused_adamw},
        "distributed": {"strategy": args.strategy, "reshard_after_forward": args.reshard},
    })
    result = time_training(cfg, args.steps, args.warmup)
    if result is None:
        return
    mfu = f", MFU {result['mfu']:.1%}" if "mfu" in result else ""
    per_device = result["tokens_per_s"] / result["ranks"]
    print(f"{args.preset} {args.strategy} {args.precision} seq_len {args.seq_len} micro-batch {args.micro_batch} "
          f"on {result['ranks']} x {args.device}: {per_device:,.0f} tokens/s per device{mfu}, "
          f"{result['step_s']:.3f} s/step, peak memory {result['peak_memory_gb']:.1f} GiB")
    print(json.dumps({**vars(args), **result}))


if __name__ == "__main__":
    main()
