"""`kiln generate CKPT --prompt ...`: complete one or more prompts in one batch."""

from __future__ import annotations

import argparse

from kiln.errors import KilnError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="complete prompts with a trained model (greedy or sampled)")
    p.add_argument("checkpoint", help="kiln model directory, run folder (highest step<N>) or Hugging Face Olmo2 dir")
    p.add_argument("--prompt", action="append", required=True,
                   help="text to complete; repeat for a batch of prompts")
    p.add_argument("--ids", action="store_true",
                   help="prompts are space-separated token ids and output is ids (for checkpoints without a tokenizer)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set with mass >= p")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling, for reproducible output")
    p.add_argument("--eos-id", type=int, default=None, help="stop a prompt at this id (default: the tokenizer's)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence at every step")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from kiln import from_pretrained
    from kiln.checkpoint import load_checkpoint_tokenizer
    from kiln.generate.sampling import generate_text

    tokenizer = load_checkpoint_tokenizer(args.checkpoint)
    if tokenizer is None and not args.ids:
        raise KilnError(f"{args.checkpoint!r} has no tokenizer.json; pass --ids with space-separated token ids")
    model = from_pretrained(args.checkpoint, device=args.device)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                    use_cache=not args.no_cache, eos_id=args.eos_id)
    if args.ids:
        _print_ids(model, tokenizer, args, sampling)
    else:
        for text in generate_text(model, tokenizer, args.prompt, args.max_new_tokens, **sampling):
            print(text)
            print("---")
    return 0


def _print_ids(model, tokenizer, args: argparse.Namespace, sampling: dict) -> None:
    """Prompts and completions as token ids, for checkpoints without a tokenizer (or to see the ids)."""
    from kiln.checkpoint import special_token_id
    from kiln.generate.sampling import generate

    if sampling["eos_id"] is None and tokenizer is not None:
        sampling["eos_id"] = special_token_id(tokenizer, "eos")
    vocab_size = min(model.cfg.vocab_size, tokenizer.get_vocab_size()) if tokenizer else None
    outputs = generate(model, [_parse_ids(p) for p in args.prompt], args.max_new_tokens, vocab_size=vocab_size,
                       **sampling)
    for prompt, new_ids in zip(args.prompt, outputs, strict=True):
        print(f"{prompt} -> {' '.join(map(str, new_ids))}")


def _parse_ids(prompt: str) -> list[int]:
    try:
        return [int(token) for token in prompt.split()]
    except ValueError as err:
        raise KilnError(f"--ids prompt {prompt!r} must be space-separated integers") from err
