"""Why answers miss: how many points a pointing answer gives, where its wrong points land, and how well the ViT
alone tells colour and shape apart.

Molmo's metrics (kiln.vlm.metrics) say how often an answer is right; these say which part of the model to fix.
Points on objects of the wrong shape with a ViT that names shapes poorly point at the image encoder; points on the
right kind of object but too many or too few of them point at the decoder.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from kiln.vlm.batches import load_image, object_class, object_labels
from kiln.vlm.metrics import hit_points, in_mask, to_pixels
from kiln.vlm.model import VLM
from kiln.vlm.points import NONE_ANSWER, parse_count, parse_labels, parse_points
from kiln.vlm.scenes import SHAPES
from kiln.vlm.synth import record_masks

NEAR = 10.0  # percent of the image: a wrong point farther than this from every object's point is "background"
LANDINGS = ("hit", "duplicate", "beside_target", "wrong_shape", "wrong_colour", "wrong_object", "background")


def point_errors(records: list[dict], answers: list[str]) -> dict:
    """Over pointing questions: the share of answers with the right number of points, too many, too few or
    malformed; and the share of all predicted points by where they land (see `landing`)."""
    number: Counter[str] = Counter()
    landed: Counter[str] = Counter()
    for record, text in zip(records, answers, strict=True):
        pred = parse_points(text)
        if pred is None:
            number["malformed"] += 1
            continue
        true = [tuple(p) for p in record["points"]]
        number["right" if len(pred) == len(true) else "too_many" if len(pred) > len(true) else "too_few"] += 1
        landed.update(landings(record, pred))
    answered, points = sum(number.values()), sum(landed.values())
    return {"answers": answered, "points": points,
            "number": {k: number[k] / answered if answered else 0.0 for k in ("right", "too_many", "too_few",
                                                                               "malformed")},
            "landing": {k: landed[k] / points if points else 0.0 for k in LANDINGS}}


def count_errors(records: list[dict], answers: list[str]) -> dict:
    """Over counting questions answered wrong, the share whose count follows the answer's own (wrong) points, the
    share whose count disagrees with them, and the share giving no count: the first is a pointing error, the other
    two are the decoder failing to finish its answer; and how many wrong counts fall short of the truth."""
    kinds: Counter[str] = Counter()
    for record, text in zip(records, answers, strict=True):
        count = parse_count(text)
        if count == record["count"]:
            continue
        points = parse_points(text)
        kinds["no_count" if count is None else "follows_points" if count == len(points or []) else "disagrees"] += 1
        kinds["too_low"] += count is not None and count < record["count"]
    wrong = sum(kinds[k] for k in ("follows_points", "disagrees", "no_count"))
    return {"questions": len(records), "wrong": wrong,
            **{k: kinds[k] / wrong if wrong else 0.0 for k in ("follows_points", "disagrees", "no_count", "too_low")}}


COLUMN = 3.0  # percent of the width: two targets this close in x share a column of the x-then-y sorted list


def missed_targets(records: list[dict], answers: list[str]) -> dict:
    """Over answers with points to questions with two or more targets: how often a target gets no predicted point
    inside its mask, by its place in the true list (sorted by x, then y: first, middle, last), and how many missed
    and found targets share a column (x within COLUMN percent) with another target. A decoder that loses its place
    in a long list misses late and same-column targets most."""
    tally: Counter[str] = Counter()
    for record, text in zip(records, answers, strict=True):
        pred, true = parse_points(text), [tuple(p) for p in record["points"]]
        if pred is None or len(true) < 2:
            continue
        masks = record_masks(record)
        for place, i in enumerate(sorted(range(len(true)), key=lambda j: true[j])):
            where = "first" if place == 0 else "last" if place == len(true) - 1 else "middle"
            found = any(in_mask(p, masks[i]) for p in to_pixels(pred, *masks[i].shape))
            kind = "found" if found else "missed"
            tally[f"{where}_{kind}"] += 1
            tally[f"{kind}_column"] += min(abs(true[i][0] - true[j][0]) for j in range(len(true)) if j != i) <= COLUMN
    places = ("first", "middle", "last")
    by_kind = {k: sum(tally[f"{w}_{k}"] for w in places) for k in ("found", "missed")}
    targets = sum(by_kind.values())
    return {"targets": targets, "missed": by_kind["missed"] / targets if targets else 0.0,
            "missed_by_place": {w: _share(tally[f"{w}_missed"], tally[f"{w}_missed"] + tally[f"{w}_found"])
                                for w in places},
            "column": {k: _share(tally[f"{k}_column"], by_kind[k]) for k in ("missed", "found")}}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def question_reading(records: list[dict], answers: list[str]) -> dict:
    """Whether answers follow the question or only the image: over pairs of questions about one image whose true
    points differ, the share where the model gives both the same (non-empty) points; and the share of questions
    about something absent answered "There are none." (a model that points at whatever stands out says it never)."""
    by_image: dict[str, list[tuple[dict, str]]] = {}
    for record, text in zip(records, answers, strict=True):
        by_image.setdefault(record["image"], []).append((record, text))
    pairs = same = 0
    for asked in by_image.values():
        for (first, a), (second, b) in itertools.combinations(asked, 2):
            if sorted(map(tuple, first["points"])) != sorted(map(tuple, second["points"])):
                pairs += 1
                pa, pb = parse_points(a), parse_points(b)
                same += bool(pa) and sorted(pa) == sorted(pb or [])
    absent = [text for record, text in zip(records, answers, strict=True) if record["count"] == 0]
    said = sum(text.strip() == NONE_ANSWER for text in absent)
    return {"pairs": pairs, "same_points": same / pairs if pairs else 0.0,
            "absent": len(absent), "none_said": said / len(absent) if absent else 0.0}


def asks_about(record: dict, pairs: set[tuple[str, str]]) -> bool:
    """Whether the question names one of `pairs` (colour and shape both)."""
    return (record["target"]["colour"], record["target"]["shape"]) in pairs


def label_errors(records: list[dict], answers: list[str], pairs: set[tuple[str, str]]) -> dict:
    """Over answers with points: the share whose label (`alt`) names something other than the question's target,
    for questions about a never-seen colour/shape pair (`pairs`) and for the rest, with the commonest swap. A model
    whose decoder writes only pairs it has seen names a never-seen one wrongly however well its ViT sees."""
    tally = {"unseen": Counter(), "seen": Counter()}
    swaps: Counter[tuple[str, str]] = Counter()
    for record, text in zip(records, answers, strict=True):
        labels = parse_labels(text)
        if not labels or "alt" not in record:
            continue
        group = tally["unseen" if asks_about(record, pairs) else "seen"]
        group["answers"] += 1
        if labels[0] != record["alt"]:
            group["wrong"] += 1
            swaps[record["alt"], labels[0]] += 1
    out = {name: {"answers": group["answers"], "wrong": group["wrong"] / group["answers"] if group["answers"]
                  else 0.0} for name, group in tally.items()}
    commonest = swaps.most_common(1)
    return {**out, "commonest": [*commonest[0][0], commonest[0][1]] if commonest else None}


def landings(record: dict, pred: list[tuple[float, float]]) -> list[str]:
    """Where each predicted point lands: a hit (Molmo's: matched to a target and inside its mask), a duplicate
    (inside a target's mask, but the match gave that target another point), beside a target (nearest object is one
    asked for, but the point is not in a target), or nearest an object of the wrong shape, colour or both, or on the
    background (no object's point within NEAR percent)."""
    masks = list(record_masks(record))
    hits = hit_points(pred, [tuple(p) for p in record["points"]], masks)
    return ["hit" if i in hits else "duplicate" if _in_a_target(point, masks) else _miss(record, point)
            for i, point in enumerate(pred)]


def _in_a_target(point: tuple[float, float], masks: list[np.ndarray]) -> bool:
    return any(in_mask(to_pixels([point], *mask.shape)[0], mask) for mask in masks)


def _miss(record: dict, point: tuple[float, float]) -> str:
    objects = record["objects"]
    if not objects:
        return "background"
    distances = [float(np.hypot(point[0] - o["point"][0], point[1] - o["point"][1])) for o in objects]
    if min(distances) > NEAR:
        return "background"
    nearest, target = objects[int(np.argmin(distances))], record["target"]
    colour_ok = target.get("colour") in (None, nearest["colour"])
    shape_ok = target.get("shape") in (None, nearest["shape"])
    if colour_ok and shape_ok:
        return "beside_target"
    return "wrong_shape" if colour_ok else "wrong_colour" if shape_ok else "wrong_object"


@torch.inference_mode()
def object_head_accuracy(model: VLM, directory: str | Path, records: list[dict], batch_size: int = 64,
                         max_images: int = 500, pairs: Iterable[tuple[str, str]] = ()) -> dict | None:
    """The ViT's object head read on its own: at the patches that hold an object's point, the share where it names
    the colour and the shape right, and how it misses: `none`, the share of them where it names no object (a point
    near a patch edge may be given to the neighbouring patch), and `spurious`, the patches without a point where
    it names one. None when the model has no object head. For each (colour, shape) pair in
    `pairs` (those never seen in training) also the shape share on that pair's objects alone and the shape it is
    most often taken for: a head that learned shape through colour fails there first."""
    if model.objects is None:
        return None
    images = list({r["image"]: r for r in records}.values())[:max_images]
    grid, device = model.cfg.vision.grid, next(model.parameters()).device
    right, total, none, spurious = np.zeros(2), 0, 0, 0
    guesses: dict[tuple[str, str], Counter] = {pair: Counter() for pair in pairs}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = torch.stack([load_image(Path(directory) / r["image"]) for r in chunk]).to(device)
        labels = torch.stack([object_labels(r, grid) for r in chunk]).to(device)
        colour, shape = model.objects.class_logits(model.vision(pixels))
        guess = torch.stack([colour.argmax(-1), shape.argmax(-1)], 1)
        at_points = labels[:, 0] > 0
        right += [(guess[:, k][at_points] == labels[:, k][at_points]).sum().item() for k in (0, 1)]
        total += int(at_points.sum())
        none += int((guess[:, 0][at_points] == 0).sum())
        spurious += int((guess[:, 0][~at_points] > 0).sum())
        for pair, seen in guesses.items():
            colour_class, shape_class = object_class(*pair)
            on_pair = (labels[:, 0] == colour_class) & (labels[:, 1] == shape_class)
            seen.update(_shape_name(int(g)) for g in guess[:, 1][on_pair])
    out = {"images": len(images), "patches": total, "colour": right[0] / max(total, 1),
           "shape": right[1] / max(total, 1), "none": none / max(total, 1), "spurious": spurious}
    if guesses:
        out["pairs"] = {f"{c} {s}": _pair_shapes(s, seen) for (c, s), seen in sorted(guesses.items()) if seen}
    return out


def _shape_name(index: int) -> str:
    return SHAPES[index - 1] if index > 0 else "none"


def _pair_shapes(shape: str, guesses: Counter) -> dict:
    """Shape share and the commonest wrong shape (with its share) over one pair's patches."""
    n = sum(guesses.values())
    wrong = [(g, k) for g, k in guesses.most_common() if g != shape]
    return {"patches": n, "shape": guesses[shape] / n, "taken_for": wrong[0][0] if wrong else None,
            "taken_for_share": wrong[0][1] / n if wrong else 0.0}
