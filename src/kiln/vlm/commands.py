"""`kiln vlm data --out DIR --n N --seed S`: the synthetic pointing and counting dataset for the tiny VLM."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm


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
    d.add_argument("--absent-share", type=float, default=0.1, metavar="P",
                   help="chance that a question after an image's first asks about something absent (default 0.1)")
    d.add_argument("--tokenizer", default=None, metavar="JSON", help="copy this tokenizer.json (e.g. another "
                   "dataset's, to continue a model trained on it) instead of training a BPE on this one's text")
    d.add_argument("--workers", type=int, default=1, help="processes drawing images (default 1)")
    d.set_defaults(func=run_data)

    t = commands.add_parser("train", help="train the VLM (no recipe: the CPU preset on data/vlm)",
                            description="Train the VLM with Kiln's trainer: checkpoints, resume, metrics.jsonl and "
                            "progress as `kiln train` has them, plus pointing F1 and counting accuracy on validation "
                            "questions at each evaluation. Dotted overrides as for kiln train, e.g. "
                            "--data.paths=[data/vlm] --trainer.steps=500; the vision section sets the ViT.")
    t.add_argument("recipe", nargs="?", help="YAML recipe (default: the built-in CPU preset)")
    t.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    t.set_defaults(func=run_train, accepts_overrides=True)

    pt = commands.add_parser("point", help="ask a trained VLM about an image; draw its points",
                             description="Print the model's answer to QUESTION about IMAGE and write a copy of the "
                             "image, 4x larger, with the answer's points drawn (red crosses).")
    pt.add_argument("checkpoint", metavar="CKPT", help="a step folder, or a run folder (its newest step)")
    pt.add_argument("image", metavar="IMAGE", help="an RGB image of the size the model was trained on")
    pt.add_argument("question", metavar="QUESTION", help='e.g. "Point to the stars."')
    pt.add_argument("--out", default=None, metavar="PNG", help="the drawn copy (default: IMAGE_points.png)")
    pt.set_defaults(func=run_point)

    e = commands.add_parser("eval", help="score a trained VLM on a dataset split as Molmo does",
                            description="Answer every question of a split; report pointing precision/recall/F1 "
                            "(Hungarian matching, a hit inside the object's mask) and counting accuracy (exact, "
                            "within one, per true count). Writes eval.json, answers.jsonl and gallery.html.")
    e.add_argument("checkpoint", metavar="CKPT", help="a step folder, or a run folder (its newest step)")
    e.add_argument("data", metavar="DATA", help="a folder written by kiln vlm data")
    e.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="test holds colour/shape pairs never seen in training (default test)")
    e.add_argument("--limit", type=int, default=None, help="first N questions only")
    e.add_argument("--out", default=None, metavar="DIR", help="default: the checkpoint's run folder/eval")
    e.set_defaults(func=run_eval)


def run_data(args: argparse.Namespace) -> int:
    import shutil
    import time
    from pathlib import Path

    from tqdm import tqdm

    from kiln.errors import KilnError
    from kiln.vlm.batches import TOKENIZER_FILE, write_tokenizer
    from kiln.vlm.synth import SPLITS, SynthConfig, load_split, write_dataset

    _check_data_args(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise KilnError(f"--out {out} is not empty; pick a new folder or delete it")
    cfg = SynthConfig(n=args.n, seed=args.seed, size=args.size, val_fraction=args.val_fraction,
                      test_n=args.test_n, questions_per_image=args.questions,
                      absent_share=args.absent_share)
    start = time.perf_counter()
    with tqdm(total=cfg.n + cfg.test_images, unit="image", desc="vlm data") as bar:
        stats = write_dataset(cfg, out, workers=args.workers, progress=bar.update)
    if args.tokenizer:  # checked readable before any image was drawn
        shutil.copyfile(args.tokenizer, out / TOKENIZER_FILE)
    else:  # the folder carries its tokenizer, as a prepared dataset does
        write_tokenizer(out, load_split(out, "train"))
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
    if not 0 <= args.absent_share <= 1:
        raise KilnError(f"--absent-share must be in [0, 1], got {args.absent_share}")
    if args.tokenizer:
        _check_tokenizer(args.tokenizer)
    if args.workers < 1:
        raise KilnError(f"--workers must be 1 or more, got {args.workers}")


def _check_tokenizer(path: str) -> None:
    from pathlib import Path

    from kiln.data.tokenizer import load_tokenizer
    from kiln.errors import KilnError

    try:
        if not Path(path).is_file():
            raise KilnError("not a file")
        load_tokenizer(path)
    except KilnError as err:
        raise KilnError(f"--tokenizer {path} is not a readable tokenizer.json: {err}") from err


def run_train(args: argparse.Namespace) -> int:
    import logging

    import yaml

    from kiln.vlm.train import load_vlm_config, train_vlm

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_vlm_config(args.recipe, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    train_vlm(cfg, resume=True if args.resume else None)
    return 0


def run_point(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PIL import Image

    from kiln.errors import KilnError
    from kiln.vlm.batches import load_image
    from kiln.vlm.evaluate import answer
    from kiln.vlm.gallery import draw_points
    from kiln.vlm.model import load_vlm
    from kiln.vlm.points import parse_points

    model, tok = load_vlm(args.checkpoint)
    image = load_image(args.image)
    size = model.cfg.vision.image_size
    if tuple(image.shape[1:]) != (size, size):
        raise KilnError(f"{args.image} is {image.shape[2]}x{image.shape[1]} pixels; this model reads {size}x{size}")
    text = answer(model, tok, image[None], [args.question])[0]
    print(text)
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + "_points.png")
    points = parse_points(text)
    with Image.open(args.image) as original:
        draw_points(original, points).save(out)
    print(f"drew {len(points or [])} point(s) on {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from kiln.checkpoint import resolve_model_dir
    from kiln.vlm.evaluate import evaluate_split, report_lines
    from kiln.vlm.model import load_vlm
    from kiln.vlm.synth import require_image_size

    model, tok = load_vlm(args.checkpoint)
    require_image_size(args.data, model.cfg.vision.image_size)
    model_dir = resolve_model_dir(args.checkpoint)
    out = Path(args.out) if args.out else model_dir.parent / "eval"
    with tqdm(unit="question", desc="vlm eval") as bar:
        result = evaluate_split(model, tok, Path(args.data), args.split, out, args.limit,
                                progress=lambda done, total: _advance(bar, done, total), checkpoint=str(model_dir))
    print("\n".join(report_lines(result)))
    print(f"wrote {out}/eval.json, answers.jsonl and gallery.html")
    return 0


def _advance(bar: tqdm, done: int, total: int) -> None:
    """Move a tqdm bar to `done` of `total` (the total is known once the split is read)."""
    bar.total = total
    bar.update(done - bar.n)
