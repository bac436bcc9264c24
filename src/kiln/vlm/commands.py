"""`kiln vlm data --out DIR --n N --seed S`: the synthetic pointing and counting dataset for the tiny VLM."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    vlm = subparsers.add_parser("vlm", help="a tiny pointing vision-language model on synthetic shapes",
                                description="Make synthetic scenes of coloured shapes with pointing and counting "
                                "questions, in Molmo's answer format, for a tiny pointing VLM.")
    commands = vlm.add_subparsers(dest="vlm_command", metavar="COMMAND", required=True)
    d = commands.add_parser("data", help="write the synthetic pointing/counting dataset",
                            description="Draw N train+val scenes and the held-out test scenes (colour/shape pairs "
                            "never seen in train or val) with their questions: DIR/images/*.png, "
                            "DIR/{train,val,test}.jsonl, DIR/meta.json and DIR/tokenizer.json (a BPE of the "
                            "training text). The same seed gives identical files.")
    d.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    d.add_argument("--n", type=int, required=True, help="train+val images, e.g. 20000")
    d.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    d.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    d.add_argument("--val-fraction", type=float, default=0.05, help="share of the N images kept for val "
                   "(default 0.05)")
    d.add_argument("--test-n", type=int, default=None, help="held-out test images (default N/20, at least 1)")
    d.add_argument("--questions", type=int, default=2, metavar="Q", help="questions per image (default 2)")
    d.add_argument("--workers", type=int, default=1, help="processes drawing images (default 1)")
    d.set_defaults(func=run_data)


def run_data(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from tqdm import tqdm

    from kiln.errors import KilnError
    from kiln.vlm.batches import write_tokenizer
    from kiln.vlm.synth import SPLITS, SynthConfig, load_split, write_dataset

    _check_data_args(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise KilnError(f"--out {out} is not empty; pick a new folder or delete it")
    cfg = SynthConfig(n=args.n, seed=args.seed, size=args.size, val_fraction=args.val_fraction,
                      test_n=args.test_n, questions_per_image=args.questions)
    start = time.perf_counter()
    with tqdm(total=cfg.n + cfg.test_images, unit="image", desc="vlm data") as bar:
        stats = write_dataset(cfg, out, workers=args.workers, progress=bar.update)
    write_tokenizer(out, load_split(out, "train"))  # the folder carries its tokenizer, as a prepared dataset does
    questions = ", ".join(f"{split} {stats[split].questions}" for split in SPLITS)
    images = sum(s.images for s in stats.values())
    print(f"wrote {out}: {images} images; questions: {questions}; {time.perf_counter() - start:.1f} s")
    return 0


def _check_data_args(args: argparse.Namespace) -> None:
    """Raise KilnError naming the first bad value."""
    from kiln.errors import KilnError

    if args.n < 1:
        raise KilnError(f"--n must be 1 or more, got {args.n}")
    if args.size < 48:
        raise KilnError(f"--size must be 48 pixels or more (12 shapes must fit), got {args.size}")
    if not 0 <= args.val_fraction < 1:
        raise KilnError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.test_n is not None and args.test_n < 0:
        raise KilnError(f"--test-n must be 0 or more, got {args.test_n}")
    if args.questions < 1:
        raise KilnError(f"--questions must be 1 or more, got {args.questions}")
    if args.workers < 1:
        raise KilnError(f"--workers must be 1 or more, got {args.workers}")
