"""The synthetic pointing dataset: scenes from `kiln.vlm.scenes`, questions about them, and its files on disk.

Layout of DIR:
    images/000000.png ...   one RGB image per scene
    train.jsonl, val.jsonl, test.jsonl   one question per line (fields in `_record`)
    meta.json               seed, sizes, colours, shapes, held-out combos, counts per split, generator version

Image i is drawn from `np.random.default_rng([seed, i])` alone, so the same seed gives byte-identical files and
images can be made in any order (or in parallel). Images 0..n-1 are train then val; the test images follow.

Counting must be learnable from 0 to `max_count`, so each image's first question samples its target count
uniformly first and the scene is built around it. Test images test composition: `held_out` (colour, shape)
pairs never appear as an object in a train or val image, and every test image's first question asks about one.

Masks are stored as run-length encodings: {"size": [height, width], "counts": [...]}, the lengths of alternating
runs of False and True pixels over the mask flattened in row-major (C) order, starting with a run of False
(which may be 0). This is COCO's uncompressed RLE except that COCO flattens column-major.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from kiln.errors import KilnError
from kiln.vlm.points import NONE_ANSWER, format_count, format_points
from kiln.vlm.scenes import COLOURS, SHAPES, Scene, SceneConfig, draw_scene

T = TypeVar("T")

GENERATOR_VERSION = 4  # 2: records say which kind of question was asked ("asked"); 3: count answers point first;
#                       4: distractors in groups, up to 8 (`plan_scene`); further questions often about other
#                          objects than the first (`further_target`)
SPLITS = ("train", "val", "test")
KINDS = ("point", "count", "count_point")  # plus "absent", for any kind whose target is not in the image
DEFAULT_HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "star"), ("blue", "hexagon"), ("yellow", "triangle"), ("purple", "circle"))

POINT_TEMPLATES = ("Point to the {plural}.", "Point to all the {plural}.", "Point to every {singular}.",
                   "Where are the {plural}?", "Show me where the {plural} are.", "Mark each {singular}.",
                   "pointing: {plural}")
POINT_SINGULAR_TEMPLATES = ("Point to the {singular}.", "Where is the {singular}?", "Show me the {singular}.")
COUNT_TEMPLATES = ("How many {plural} are there?", "How many {plural} are in the image?", "Count the {plural}.",
                   "What is the number of {plural}?", "How many {plural} can you see?")
COUNT_POINT_TEMPLATES = ("Count the {plural} and point to each one.", "Point to the {plural} and count them.",
                         "How many {plural} are there? Point to each.", "counting: {plural}",
                         "Point to each {singular}, then say how many there are.")


@dataclass(frozen=True)
class SynthConfig:
    """What `write_dataset` makes. `n` counts the train and val images; the test images come on top."""

    n: int
    seed: int = 0
    size: int = 96
    val_fraction: float = 0.05
    test_n: int | None = None  # default: n // 20, at least 1
    questions_per_image: int = 2
    max_count: int = 10
    max_objects: int = 12
    max_distractors: int = 8
    absent_share: float = 0.1  # chance that a further question's target is absent from the image
    held_out: tuple[tuple[str, str], ...] = DEFAULT_HELD_OUT

    @property
    def val_n(self) -> int:
        return int(round(self.n * self.val_fraction))

    @property
    def test_images(self) -> int:
        return max(1, self.n // 20) if self.test_n is None else self.test_n


@dataclass(frozen=True)
class Target:
    """What a question asks about: a colour, a shape, or both."""

    colour: str | None = None
    shape: str | None = None

    def matches(self, colour: str, shape: str) -> bool:
        return (self.colour in (None, colour)) and (self.shape in (None, shape))

    @property
    def singular(self) -> str:
        return " ".join(part for part in (self.colour, self.shape or "shape") if part)

    @property
    def plural(self) -> str:
        return self.singular + "s"


def split_of(index: int, cfg: SynthConfig) -> str:
    """Images 0..n-1 are train then val (the last `val_n`); the `test_images` after them are test."""
    if index < cfg.n - cfg.val_n:
        return "train"
    return "val" if index < cfg.n else "test"


def allowed_combos(split: str, cfg: SynthConfig) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a split's images may contain: all of them in test, the rest elsewhere."""
    combos = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    return combos if split == "test" else [combo for combo in combos if combo not in cfg.held_out]


def _choice(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def plan_scene(rng: np.random.Generator, split: str, cfg: SynthConfig) -> tuple[Target, list[tuple[str, str]]]:
    """The first question's target and the scene's objects: `count` targets (uniform in 0..max_count; 1.. in
    test, whose target is a held-out pair) plus distractors that do not match it, in groups of one (colour, shape)
    pair each, half of the groups near misses. With distractors drawn one by one (version 3) the target was the
    largest group in 90% of images, and a model could point at the largest group without reading the question."""
    combos = allowed_combos(split, cfg)
    if split == "test":
        target, count = Target(*_choice(rng, list(cfg.held_out))), int(rng.integers(1, cfg.max_count + 1))
    else:
        target, count = _sample_target(rng, combos), int(rng.integers(0, cfg.max_count + 1))
    matching = [combo for combo in combos if target.matches(*combo)]
    others = [combo for combo in combos if not target.matches(*combo)]
    near = [combo for combo in others if combo[0] == target.colour or combo[1] == target.shape] or others
    low = 1 if count == 0 else 0
    high = max(low, min(cfg.max_objects - count, cfg.max_distractors))
    specs = [_choice(rng, matching) for _ in range(count)]
    remaining = int(rng.integers(low, high + 1))
    while remaining:  # distractors come in groups of one pair, so the target is often not the largest group
        size = int(rng.integers(1, remaining + 1))
        specs += [_choice(rng, near if rng.random() < 0.5 else others)] * size
        remaining -= size
    return target, specs


def _sample_target(rng: np.random.Generator, combos: list[tuple[str, str]]) -> Target:
    colour, shape = _choice(rng, combos)
    draw = rng.random()
    if draw < 0.5:
        return Target(colour, shape)
    return Target(colour=colour) if draw < 0.75 else Target(shape=shape)


def further_target(rng: np.random.Generator, scene: Scene, split: str, cfg: SynthConfig,
                   exclude: list[Target]) -> Target:
    """A target for a further question. With chance `absent_share` it is absent from the scene (never a held-out pair
    outside test, which would teach that those pairs do not exist); otherwise one of the counts the scene's
    targets have, with odds proportional to the count, then a target with that count: most pairs in a scene
    occur once, and uniform picks would flood the data with counts of 1. Half the time (version 4) only targets
    sharing no object with the earlier questions' are eligible, so one image is asked about different objects and
    the answer cannot be read off the image alone."""
    present = sorted(_present_targets(scene) - set(exclude), key=_target_key)
    if rng.random() < 0.5:
        asked = {i for target in exclude for i in _targets_in(scene, target)}
        present = [target for target in present if not asked & set(_targets_in(scene, target))] or present
    by_count: dict[int, list[Target]] = {}
    for target in present:
        by_count.setdefault(len(_targets_in(scene, target)), []).append(target)
    by_count = {count: targets for count, targets in by_count.items() if count <= cfg.max_count}
    if rng.random() >= cfg.absent_share and by_count:
        counts = sorted(by_count)
        weights = np.array(counts, dtype=np.float64) / sum(counts)
        return _choice(rng, by_count[counts[int(rng.choice(len(counts), p=weights))]])
    absent = {Target(c, s) for c, s in allowed_combos(split, cfg)}
    absent |= {Target(colour=c) for c in COLOURS} | {Target(shape=s) for s in SHAPES}
    absent -= _present_targets(scene) | set(exclude)
    return _choice(rng, sorted(absent, key=_target_key))


def _present_targets(scene: Scene) -> set[Target]:
    """Every combo, colour and shape of the scene's objects, as targets."""
    targets = set()
    for o in scene.objects:
        targets |= {Target(o.colour, o.shape), Target(colour=o.colour), Target(shape=o.shape)}
    return targets


def _target_key(target: Target) -> tuple[str, str]:
    return target.colour or "", target.shape or ""


def _targets_in(scene: Scene, target: Target) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if target.matches(o.colour, o.shape)]


def percent(point: tuple[float, float], shape: tuple[int, ...]) -> tuple[float, float]:
    """A pixel-space (x, y) point in percent of the image's width and height, to the 0.1 the answers print
    (0.1% of 96 pixels stays inside the pixel whose centre it rounds)."""
    height, width = shape[:2]
    return round(100 * point[0] / width, 1), round(100 * point[1] / height, 1)


def ask(rng: np.random.Generator, scene: Scene, target: Target) -> dict:
    """One question about `target` with its answer; kind "absent" whenever no object matches."""
    indices = _targets_in(scene, target)
    found = sorted((percent(scene.objects[i].point, scene.image.shape), i) for i in indices)
    points = [point for point, _ in found]
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind == "point":
        singular = len(points) <= 1 and rng.random() < 0.3
        template = _choice(rng, list(POINT_SINGULAR_TEMPLATES if singular else POINT_TEMPLATES))
    else:
        template = _choice(rng, list(COUNT_TEMPLATES if kind == "count" else COUNT_POINT_TEMPLATES))
    question = template.format(singular=target.singular, plural=target.plural)
    return {"question": question, "answer": answer_for(kind, points, target.singular),
            "kind": kind if points else "absent", "asked": kind,
            "target": {"colour": target.colour, "shape": target.shape},
            "alt": target.singular, "points": [list(p) for p in points], "count": len(points),
            "masks": [encode_rle(scene.objects[i].mask) for _, i in found]}


def answer_for(kind: str, points: list[tuple[float, float]], alt: str) -> str:
    """The answer text: points for a pointing question; for both kinds of counting question Molmo's counting form,
    the points and then the total ("Counting the <points ...>...</points> shows a total of 3."), so the model
    counts by pointing, as Molmo does."""
    if not points:
        return NONE_ANSWER
    return format_points(points, alt) if kind == "point" else format_count(points, alt)


def make_image(cfg: SynthConfig, index: int) -> tuple[bytes, list[dict]]:
    """The PNG bytes and question records of image `index`, from its own generator."""
    rng = np.random.default_rng([cfg.seed, index])
    split = split_of(index, cfg)
    target, specs = plan_scene(rng, split, cfg)
    scene = draw_scene(rng, specs, SceneConfig(size=cfg.size))
    targets = [target]
    while len(targets) < cfg.questions_per_image:
        targets.append(further_target(rng, scene, split, cfg, targets))
    image_path = f"images/{index:06d}.png"
    objects = [{"colour": o.colour, "shape": o.shape, "point": list(percent(o.point, scene.image.shape))}
               for o in scene.objects]
    records = [_record(f"{index:06d}-{q}", image_path, cfg.size, ask(rng, scene, target), objects)
               for q, target in enumerate(targets)]
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="PNG")
    return buffer.getvalue(), records


def _record(question_id: str, image_path: str, size: int, question: dict, objects: list[dict]) -> dict:
    """One JSONL line: id, image (relative to DIR), image_size [height, width], question, answer, kind,
    asked (the kind of question, even when its target is absent: point, count or count_point), target
    {colour, shape} (null when not asked), alt, points [[x, y]] in percent of width/height sorted by x then y,
    count, masks (RLE, one per point, same order) and objects (all of the image's, in drawing order)."""
    return {"id": question_id, "image": image_path, "image_size": [size, size], **question, "objects": objects}


@dataclass
class SplitStats:
    images: int = 0
    questions: int = 0
    counts: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)

    def add(self, records: list[dict]) -> None:
        self.images += 1
        self.questions += len(records)
        self.counts.update(r["count"] for r in records)
        self.kinds.update(r["kind"] for r in records)

    def to_json(self) -> dict:
        return {"images": self.images, "questions": self.questions,
                "counts": {str(k): self.counts[k] for k in sorted(self.counts)},
                "kinds": {k: self.kinds[k] for k in sorted(self.kinds)}}


def write_dataset(cfg: SynthConfig, out: str | Path, workers: int = 1,
                  progress: Callable[[int], None] | None = None) -> dict[str, SplitStats]:
    """Write DIR/images, the three JSONL splits and meta.json; `progress(1)` is called after each image.
    With `workers` > 1 images are drawn in that many processes; the files are the same either way."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    stats = {split: SplitStats() for split in SPLITS}
    files = {split: open(out / f"{split}.jsonl", "w", encoding="utf-8") for split in SPLITS}
    try:
        for index, (png, records) in enumerate(_images(cfg, workers)):
            (out / records[0]["image"]).write_bytes(png)
            split = split_of(index, cfg)
            files[split].writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
            stats[split].add(records)
            if progress is not None:
                progress(1)
    finally:
        for handle in files.values():
            handle.close()
    (out / "meta.json").write_text(json.dumps(_meta(cfg, stats), indent=2) + "\n", encoding="utf-8")
    return stats


def _images(cfg: SynthConfig, workers: int) -> Iterator[tuple[bytes, list[dict]]]:
    """`make_image` for every index, in index order."""
    indices = range(cfg.n + cfg.test_images)
    if workers <= 1:
        yield from (make_image(cfg, index) for index in indices)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(partial(make_image, cfg), indices, chunksize=32)


def _meta(cfg: SynthConfig, stats: dict[str, SplitStats]) -> dict:
    return {"generator": "kiln.vlm.synth", "version": GENERATOR_VERSION, "seed": cfg.seed, "n": cfg.n,
            "val_n": cfg.val_n, "test_n": cfg.test_images, "image_size": [cfg.size, cfg.size],
            "questions_per_image": cfg.questions_per_image, "max_count": cfg.max_count,
            "absent_share": cfg.absent_share,
            "colours": {name: list(rgb) for name, rgb in COLOURS.items()}, "shapes": list(SHAPES),
            "held_out": [list(combo) for combo in cfg.held_out],
            "points": "percent of width and height, (x, y), 0-100, sorted by x then y",
            "rle": "counts of alternating False/True runs over the row-major (C-order) flattened mask, "
                   "starting with False; size is [height, width]",
            "splits": {split: s.to_json() for split, s in stats.items()}}


def encode_rle(mask: np.ndarray) -> dict:
    """Run lengths of the row-major flattened bool mask, starting with a (possibly empty) run of False."""
    flat = np.asarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """The (height, width) bool mask of an `encode_rle` dict."""
    height, width = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    flat = np.repeat(values, rle["counts"])
    if flat.size != height * width:
        raise ValueError(f"RLE counts sum to {flat.size}, expected {height}x{width} = {height * width}")
    return flat.reshape(height, width)


def record_masks(record: dict) -> np.ndarray:
    """The (count, height, width) bool masks of a record's target objects, in the order of its points."""
    height, width = record["image_size"]
    masks = [decode_rle(rle) for rle in record["masks"]]
    return np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)


def load_split(directory: str | Path, split: str, decode_masks: bool = False) -> list[dict]:
    """The records of DIR/{split}.jsonl. Masks stay RLE dicts (decode one with `record_masks`) unless
    `decode_masks`, which replaces them with a (count, height, width) bool array."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(directory) / f"{split}.jsonl"
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    if decode_masks:
        for record in records:
            record["masks"] = record_masks(record)
    return records


def require_image_size(directory: str | Path, size: int) -> None:
    """Stop before training or scoring when a dataset's images (meta.json) are not the size the model reads, which
    would otherwise fail deep in the ViT with a shape error."""
    height, width = json.loads((Path(directory) / "meta.json").read_text())["image_size"]
    if (height, width) != (size, size):
        raise KilnError(f"{directory} holds {width}x{height} images; the model reads {size}x{size} "
                        f"(vision.image_size={size})")
