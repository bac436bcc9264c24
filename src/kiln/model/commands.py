"""`kiln info PRESET`: the shape, parameter counts and FLOPs per token of a preset."""

from __future__ import annotations

import argparse
import json

from kiln.model.config import flops_per_token, param_counts
from kiln.model.presets import PRESETS, preset


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show a model preset's shape, parameters and FLOPs per token")
    p.add_argument("preset", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--seq-len", type=int, default=None, help="context length for the attention FLOPs term")
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary size")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=run_info)


def describe(name: str, seq_len: int | None = None, vocab_size: int | None = None) -> dict:
    cfg = preset(name, **({"vocab_size": vocab_size} if vocab_size else {}))
    seq_len = seq_len or cfg.max_seq_len
    counts = param_counts(cfg)
    return {
        "preset": name, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.kv_heads, "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size,
        "padded_vocab_size": cfg.padded_vocab_size, "params_total": counts["total"],
        "params_non_embedding": counts["non_embedding"], "seq_len": seq_len,
        "flops_per_token": flops_per_token(cfg, seq_len), "config": cfg.to_dict(),
    }


def run_info(args: argparse.Namespace) -> int:
    info = describe(args.preset, args.seq_len, args.vocab_size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['preset']}: {info['n_layers']} layers, d_model {info['d_model']}, {info['n_heads']} heads "
          f"({info['n_kv_heads']} KV), MLP hidden {info['d_ff']}")
    print(f"vocab {info['vocab_size']} (padded {info['padded_vocab_size']})")
    print(f"parameters: {info['params_total']:,} total, {info['params_non_embedding']:,} non-embedding "
          f"({info['params_total'] / 1e9:.2f}B)")
    print(f"training FLOPs per token at seq {info['seq_len']}: {info['flops_per_token']:.3e}")
    return 0
