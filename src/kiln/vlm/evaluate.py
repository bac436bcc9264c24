"""Answer questions about images by greedy decoding, and score the answers as Molmo does (kiln.vlm.metrics).

Pointing is scored on every question that asks for points ("point" and "count_point", their absent-target
versions included); counting on every question that asks for a number ("count" and "count_point").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer

from kiln.data.tokenizer import eos_id
from kiln.generate.sampling import generate
from kiln.vlm.batches import SEPARATOR, load_image
from kiln.vlm.diagnose import (
    asks_about,
    count_errors,
    label_errors,
    missed_targets,
    object_head_accuracy,
    point_errors,
    question_reading,
)
from kiln.vlm.metrics import aggregate_point_scores, counting_scores, point_scores
from kiln.vlm.model import VLM
from kiln.vlm.points import NONE_ANSWER, parse_count, parse_points
from kiln.vlm.synth import record_masks

POINTING = ("point", "count_point")
COUNTING = ("count", "count_point")


@torch.inference_mode()
def answer(model: VLM, tok: Tokenizer, images: torch.Tensor, questions: list[str],
           max_new_tokens: int = 200) -> list[str]:
    """Greedy answers, one per (image, question), batched with a KV cache."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prefix = model.image_tokens(images.to(device))
    prompts = [tok.encode(q + SEPARATOR).ids for q in questions]
    end = eos_id(tok)
    outputs = generate(model.text, prompts, max_new_tokens, eos_id=end, vocab_size=tok.get_vocab_size(),
                       prefix=prefix, prefix_lm=model.cfg.prefix_lm)
    model.train(was_training)
    return [tok.decode([t for t in ids if t != end]) for ids in outputs]


def answer_records(model: VLM, tok: Tokenizer, directory: str | Path, records: list[dict], batch_size: int = 64,
                   max_new_tokens: int = 200, progress: Callable[[int, int], object] | None = None) -> list[str]:
    """The model's answer to each record's question about its image; `progress(answered, total)` after each
    batch."""
    out: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = torch.stack([load_image(Path(directory) / r["image"]) for r in chunk])
        out += answer(model, tok, images, [r["question"] for r in chunk], max_new_tokens)
        if progress is not None:
            progress(len(out), len(records))
    return out


def score(records: list[dict], answers: list[str]) -> dict[str, float | dict]:
    """Pointing precision/recall/F1 (averaged over questions) and counting accuracies of the answers."""
    pointing = [point_scores(parse_points(a), [tuple(p) for p in r["points"]], list(record_masks(r)))
                for r, a in zip(*select(records, answers, lambda r: r["asked"] in POINTING), strict=True)]
    counted, counted_answers = select(records, answers, lambda r: r["asked"] in COUNTING)
    out: dict[str, float | dict] = {}
    if pointing:
        out.update({f"point_{k}": v for k, v in aggregate_point_scores(pointing).items()})
    if counted:
        counts = counting_scores([parse_count(a) for a in counted_answers], [r["count"] for r in counted])
        out.update({f"count_{k}": v for k, v in counts.items()})
    return out


def evaluate_split(model: VLM, tok: Tokenizer, directory: str | Path, split: str, out: Path, limit: int | None = None,
                   batch_size: int = 64, gallery: int = 48,
                   progress: Callable[[int, int], object] | None = None, checkpoint: str | None = None) -> dict:
    """Answer and score a split; write out/eval.json, out/answers.jsonl and out/gallery.html (first `gallery`
    questions, drawn). `progress(answered, total)` follows the answering, the long part; `checkpoint` (the step
    folder the model came from) and the answering time go into eval.json, so a score says what it scored."""
    from kiln.vlm.synth import load_split

    records = load_split(directory, split)[:limit]
    start = time.perf_counter()
    answers = answer_records(model, tok, directory, records, batch_size, progress=progress)
    result = {"split": split, "questions": len(records), "checkpoint": checkpoint,
              "answer_seconds": round(time.perf_counter() - start, 1), **score(records, answers)}
    unseen = unseen_pairs(directory)
    for name, keep in (("unseen_pair", True), ("seen_pair", False)):
        chosen = select(records, answers, lambda r, keep=keep: asks_about(r, unseen) is keep)
        if chosen[0]:
            result[name] = {"questions": len(chosen[0]), **score(*chosen)}
    result["diagnosis"] = diagnosis(model, directory, records, answers, unseen)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    write_answers(out / "answers.jsonl", records, answers)
    draw_gallery(out, directory, records[:gallery], answers[:gallery], f"kiln vlm eval: {split} split of {directory}")
    return result


def select(records: list[dict], answers: list[str], keep: Callable[[dict], bool]) -> tuple[list[dict], list[str]]:
    """The records that `keep` accepts, and their answers."""
    chosen = [(r, a) for r, a in zip(records, answers, strict=True) if keep(r)]
    return [r for r, _ in chosen], [a for _, a in chosen]


def write_answers(path: Path, records: list[dict], answers: list[str]) -> None:
    """One JSON line per question: its id, the question, the model's answer and the true one."""
    with path.open("w") as f:
        for record, text in zip(records, answers, strict=True):
            f.write(json.dumps({"id": record["id"], "question": record["question"], "answer": text,
                                "truth": record["answer"]}) + "\n")


def draw_gallery(out: Path, directory: str | Path, records: list[dict], answers: list[str], title: str) -> None:
    """out/images/ID.png with the true and predicted points drawn, and out/gallery.html showing them with each
    pointing answer's F1."""
    from kiln.vlm.gallery import draw_points, write_gallery

    (out / "images").mkdir(exist_ok=True)
    rows = []
    for record, text in zip(records, answers, strict=True):
        predicted, true = parse_points(text), [tuple(p) for p in record["points"]]
        with Image.open(Path(directory) / record["image"]) as image:
            draw_points(image, predicted, true).save(out / f"images/{record['id']}.png")
        pointing = record["asked"] in POINTING
        rows.append({"image": f"images/{record['id']}.png", "question": record["question"], "answer": text,
                     "truth": record["answer"],
                     "f1": point_scores(predicted, true, list(record_masks(record)))["f1"] if pointing else None})
    write_gallery(out, rows, title)


def diagnosis(model: VLM, directory: str | Path, records: list[dict], answers: list[str],
              pairs: set[tuple[str, str]]) -> dict:
    """Which part fails (kiln.vlm.diagnose): the pointing and counting answers' errors, and the ViT's object head
    alone; `pairs` are the colour/shape pairs never seen in training."""
    pointed = select(records, answers, lambda r: r["asked"] in POINTING)
    counted = select(records, answers, lambda r: r["asked"] in COUNTING)
    return {"points": point_errors(*pointed) if pointed[0] else None,
            "counts": count_errors(*counted) if counted[0] else None, "missed": missed_targets(records, answers),
            "reading": question_reading(records, answers), "labels": label_errors(records, answers, pairs),
            "vision": object_head_accuracy(model, directory, records, pairs=pairs)}


def unseen_pairs(directory: str | Path) -> set[tuple[str, str]]:
    """The (colour, shape) pairs the dataset kept out of its train and val images (meta.json)."""
    meta = json.loads((Path(directory) / "meta.json").read_text())
    return {tuple(pair) for pair in meta.get("held_out", [])}


def _title(result: dict) -> str:
    """"test: 6000 questions", with the checkpoint and the answering time when eval.json has them."""
    where = f" of {result['checkpoint']}" if result.get("checkpoint") else ""
    took = f", answered in {result['answer_seconds']:.0f} s" if result.get("answer_seconds") is not None else ""
    return f"{result['split']}: {result['questions']} questions{where}{took}"


def report_lines(result: dict) -> list[str]:
    """The evaluation as a few plain lines: pointing, counting, counting per true count; then the questions about
    colour/shape pairs never seen in training apart from the others."""
    lines = _score_lines(result, _title(result))
    for name, title in (("unseen_pair", "about a colour/shape pair never seen in training"),
                        ("seen_pair", "about anything else")):
        if name in result:
            lines += _score_lines(result[name], f"{result[name]['questions']} questions {title}")
    return lines + _diagnosis_lines(result.get("diagnosis") or {})


def _diagnosis_lines(diagnosis: dict) -> list[str]:
    lines = []
    if diagnosis.get("points"):
        points = diagnosis["points"]
        number = "  ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in points["number"].items())
        landing = "  ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in points["landing"].items())
        lines += [f"why pointing misses ({points['answers']} answers, {points['points']} points)",
                  f"number of points  {number}", f"points landing    {landing}"]
    if diagnosis.get("counts"):
        counts = diagnosis["counts"]
        lines.append(f"why counts miss ({counts['wrong']} of {counts['questions']} wrong): the count follows its own "
                     f"points {counts['follows_points']:.2f}, disagrees with them {counts['disagrees']:.2f}, no count "
                     f"{counts['no_count']:.2f}; below the truth {counts['too_low']:.2f}")
    if diagnosis.get("missed", {}).get("targets"):
        missed = diagnosis["missed"]
        place = "  ".join(f"{k} {v:.3f}" for k, v in missed["missed_by_place"].items())
        lines.append(f"which targets are missed ({missed['targets']} targets of questions with two or more): "
                     f"{missed['missed']:.3f} in all; by place in the x-sorted list  {place}; sharing a column with "
                     f"another target: {missed['column']['missed']:.2f} of the missed, {missed['column']['found']:.2f} "
                     "of the found")
    if diagnosis.get("reading"):
        reading = diagnosis["reading"]
        lines.append(f"reads the question: same points for two questions about one image with different answers "
                     f"{reading['same_points']:.2f} ({reading['pairs']} pairs); \"{NONE_ANSWER}\" for absent "
                     f"targets {reading['none_said']:.2f} ({reading['absent']})")
    if diagnosis.get("labels"):
        labels = diagnosis["labels"]
        swap = labels["commonest"]
        lines.append(f"labels naming another object than asked: never-seen pairs {labels['unseen']['wrong']:.2f} "
                     f"({labels['unseen']['answers']}), others {labels['seen']['wrong']:.2f} "
                     f"({labels['seen']['answers']})" + (f"; most often {swap[0]} -> {swap[1]} ({swap[2]})"
                                                         if swap else ""))
    if diagnosis.get("vision"):
        vision = diagnosis["vision"]
        lines.append(f"ViT object head alone, at the {vision['patches']} patches holding a point: colour "
                     f"{vision['colour']:.3f}  shape {vision['shape']:.3f}; names no object at "
                     f"{vision['none']:.3f} of them, and one at {vision['spurious']} patches without a point")
        for pair, pair_result in vision.get("pairs", {}).items():
            taken = (f" (taken for {pair_result['taken_for']} {pair_result['taken_for_share']:.2f})"
                     if pair_result["taken_for"] else "")
            lines.append(f"  never-seen {pair} ({pair_result['patches']} patches): shape {pair_result['shape']:.2f}"
                         f"{taken}")
    return lines


def _score_lines(result: dict, title: str) -> list[str]:
    lines = [title]
    if "point_f1" in result:
        lines.append(f"pointing  precision {result['point_precision']:.3f}  recall {result['point_recall']:.3f}  "
                     f"F1 {result['point_f1']:.3f}")
    if "count_accuracy" in result:
        lines.append(f"counting  exact {result['count_accuracy']:.3f}  within one {result['count_within_one']:.3f}  "
                     f"answered with a count {result['count_valid']:.3f}")
        per = "  ".join(f"{count}: {acc:.2f} (n={n})" for count, (acc, n) in result["count_per_count"].items())
        lines.append(f"exact by true count  {per}")
    return lines
