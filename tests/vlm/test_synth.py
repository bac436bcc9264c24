"""The synthetic pointing dataset: deterministic files, exact points and masks, held-out pairs, the CLI."""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiln.errors import KilnError
from kiln.vlm import commands
from kiln.vlm.points import parse_count, parse_points
from kiln.vlm.scenes import COLOURS, SceneConfig, draw_scene, sample_background
from kiln.vlm.synth import (
    NONE_ANSWER,
    SPLITS,
    SynthConfig,
    Target,
    decode_rle,
    encode_rle,
    load_split,
    make_image,
    plan_scene,
    record_masks,
    write_dataset,
)


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="kiln")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vlm") / "data"
    assert _run_cli("vlm", "data", "--out", str(out), "--n", "40", "--seed", "7", "--test-n", "12") == 0
    return out


def _all_records(directory: Path) -> dict[str, list[dict]]:
    return {split: load_split(directory, split) for split in SPLITS}


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_cli_writes_images_splits_and_meta(dataset, capsys):
    meta = json.loads((dataset / "meta.json").read_text())
    records = _all_records(dataset)
    assert meta["n"] == 40 and meta["test_n"] == 12 and meta["image_size"] == [96, 96]
    assert len(list((dataset / "images").glob("*.png"))) == 52
    assert (dataset / "tokenizer.json").is_file()  # the folder carries the tokenizer it is trained with
    for split in SPLITS:
        assert meta["splits"][split]["questions"] == len(records[split]) > 0
    image = Image.open(dataset / records["train"][0]["image"])
    assert image.size == (96, 96) and image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_other_files(dataset, tmp_path):
    assert _run_cli("vlm", "data", "--out", str(tmp_path / "again"), "--n", "40", "--seed", "7", "--test-n", "12",
                    "--workers", "2") == 0
    write_dataset(SynthConfig(n=40, seed=8, test_n=12), tmp_path / "other")
    assert _file_bytes(tmp_path / "again") == _file_bytes(dataset)
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (dataset / "train.jsonl").read_bytes()
    assert (tmp_path / "other/images/000000.png").read_bytes() != (dataset / "images/000000.png").read_bytes()


def test_points_lie_in_their_nonempty_disjoint_masks(dataset):
    for record in itertools.chain(*_all_records(dataset).values()):
        masks = record_masks(record)
        assert masks.shape == (record["count"], 96, 96)
        assert masks.sum(axis=(1, 2)).min(initial=1) > 0
        assert masks.sum(axis=0).max(initial=0) <= 1
        for (x, y), mask in zip(record["points"], masks):
            assert mask[int(y / 100 * 96), int(x / 100 * 96)]


def test_target_pixels_have_the_target_colour(dataset):
    for record in load_split(dataset, "val"):
        image = np.asarray(Image.open(dataset / record["image"]), dtype=int)
        for mask, objects in zip(record_masks(record), _matching(record)):
            colour = np.array(COLOURS[objects["colour"]])
            assert np.abs(image[mask] - colour).max() <= SceneConfig().colour_jitter


def _matching(record: dict) -> list[dict]:
    """The record's target objects, ordered like its points."""
    target = Target(**record["target"])
    return sorted((o for o in record["objects"] if target.matches(o["colour"], o["shape"])),
                  key=lambda o: tuple(o["point"]))


def test_scene_masks_partition_the_drawn_objects():
    rng = np.random.default_rng(0)
    scene = draw_scene(rng, [("red", "circle")] * 6 + [("blue", "star"), ("green", "square")] * 3)
    masks = np.stack([o.mask for o in scene.objects])
    assert len(scene.objects) == 12
    assert masks.sum(axis=0).max() == 1 and masks.sum(axis=(1, 2)).min() >= SceneConfig().min_visible_pixels
    for o in scene.objects:
        assert o.mask[int(o.point[1]), int(o.point[0])]


def test_backgrounds_stay_far_from_every_object_colour():
    cfg = SceneConfig(noise_std=0.0)
    palette = np.array(list(COLOURS.values()), dtype=float)
    for seed in range(40):
        pixels = sample_background(np.random.default_rng(seed), cfg).reshape(-1, 3)
        distances = np.sqrt(((pixels[:, None, :] - palette[None]) ** 2).sum(axis=-1))
        assert distances.min() >= cfg.background_min_distance - 10


def test_answers_parse_back_to_points_and_counts(dataset):
    for record in itertools.chain(*_all_records(dataset).values()):
        answer, count = record["answer"], record["count"]
        counting = record["asked"] in ("count", "count_point")
        assert parse_count(answer) == (count if counting or not count else None)  # a pointing answer states no total
        assert parse_points(answer) == [tuple(p) for p in record["points"]]
        if record["asked"] in ("count", "count_point") and count:  # both count by pointing, as Molmo does
            assert answer.startswith("Counting the <point") and answer.endswith(f"shows a total of {count}.")


def test_held_out_pairs_only_in_test_and_in_every_test_image(dataset):
    held_out = {tuple(pair) for pair in json.loads((dataset / "meta.json").read_text())["held_out"]}
    records = _all_records(dataset)
    for record in records["train"] + records["val"]:
        assert not {(o["colour"], o["shape"]) for o in record["objects"]} & held_out
    for record in records["test"]:
        assert {(o["colour"], o["shape"]) for o in record["objects"]} & held_out
    first_questions = [r for r in records["test"] if r["id"].endswith("-0")]
    assert len(first_questions) == 12
    assert all((r["target"]["colour"], r["target"]["shape"]) in held_out for r in first_questions)


def test_absent_questions_answer_none_and_the_target_is_absent(dataset):
    absent = [r for r in load_split(dataset, "train") if r["kind"] == "absent"]
    assert absent
    for record in absent:
        assert record["answer"] == NONE_ANSWER and record["count"] == 0 and record["points"] == []
        assert not _matching(record)
    assert {r["asked"] for r in absent} == {"point", "count", "count_point"}  # what was asked survives
    present = [r for r in load_split(dataset, "train") if r["kind"] != "absent"]
    assert all(r["asked"] == r["kind"] for r in present)


def test_first_question_counts_are_uniform_over_0_to_10():
    cfg = SynthConfig(n=1000)
    counts = []
    for index in range(1100):
        target, specs = plan_scene(np.random.default_rng([0, index]), "train", cfg)
        counts.append(sum(target.matches(*spec) for spec in specs))
    histogram = np.bincount(counts, minlength=11)
    assert len(histogram) == 11 and histogram.min() > 60


@pytest.mark.parametrize("share", [0.0, 0.4, 1.0])
def test_absent_share_sets_how_often_a_further_question_is_absent(share):
    cfg = SynthConfig(n=300, absent_share=share)
    second = [make_image(cfg, index)[1][1] for index in range(250)]
    absent = np.mean([record["kind"] == "absent" for record in second])
    assert abs(absent - share) < 0.09


def test_cli_rejects_an_absent_share_outside_0_to_1(tmp_path):
    with pytest.raises(KilnError, match="--absent-share must be in \\[0, 1\\], got 1.5"):
        _run_cli("vlm", "data", "--out", str(tmp_path / "new"), "--n", "5", "--absent-share", "1.5")


def test_tokenizer_flag_copies_another_datasets_tokenizer(dataset, tmp_path):
    """A second dataset for a model trained on the first must spell text with the first's tokenizer."""
    out = tmp_path / "more"
    assert _run_cli("vlm", "data", "--out", str(out), "--n", "6", "--seed", "8", "--test-n", "2",
                    "--tokenizer", str(dataset / "tokenizer.json")) == 0
    assert (out / "tokenizer.json").read_bytes() == (dataset / "tokenizer.json").read_bytes()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KilnError, match="--tokenizer .*bad.json is not a readable tokenizer.json"):
        _run_cli("vlm", "data", "--out", str(tmp_path / "x"), "--n", "5", "--tokenizer", str(tmp_path / "bad.json"))
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_the_first_target_is_often_outnumbered_by_a_distractor_group():
    """Distractors come in groups, so pointing at the largest group is no substitute for reading the question
    (drawn one by one, as in generator version 3, the target outnumbered every other pair in 90% of images)."""
    cfg = SynthConfig(n=1000)
    outnumbered = present = 0
    for index in range(600):
        target, specs = plan_scene(np.random.default_rng([0, index]), "train", cfg)
        groups = Counter(specs)
        count = sum(n for pair, n in groups.items() if target.matches(*pair))
        rivals = [n for pair, n in groups.items() if not target.matches(*pair)]
        if count:
            present += 1
            outnumbered += max(rivals, default=0) >= count
    assert outnumbered / present > 0.2


def test_further_questions_often_ask_about_other_objects():
    """One image, questions about disjoint sets of objects: the image alone does not say what to point at."""
    cfg = SynthConfig(n=1000, absent_share=0.0)
    pairs = [make_image(cfg, index)[1] for index in range(300)]
    disjoint = [not {tuple(p) for p in first["points"]} & {tuple(p) for p in second["points"]}
                for first, second in pairs if first["count"] and second["count"]]
    assert np.mean(disjoint) > 0.4


def test_rle_round_trips_row_major():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = mask[0, 1] = mask[2, 3] = True
    rle = encode_rle(mask)
    assert rle == {"size": [3, 4], "counts": [0, 2, 9, 1]}
    assert np.array_equal(decode_rle(rle), mask)
    assert not decode_rle(encode_rle(np.zeros((2, 5), dtype=bool))).any()


def test_load_split_decodes_masks_on_request(dataset):
    record = next(r for r in load_split(dataset, "train", decode_masks=True) if r["count"] > 0)
    assert record["masks"].dtype == bool and record["masks"].shape == (record["count"], 96, 96)


def test_cli_rejects_zero_images_and_a_used_folder(dataset, tmp_path):
    with pytest.raises(KilnError, match="--n must be 1 or more, got 0"):
        _run_cli("vlm", "data", "--out", str(tmp_path / "new"), "--n", "0")
    with pytest.raises(KilnError, match="not empty"):
        _run_cli("vlm", "data", "--out", str(dataset), "--n", "5")
