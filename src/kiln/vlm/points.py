"""Molmo's point text format: writing answers with points in them, and reading points back out of model output.

Points are (x, y) in percent of the image width and height (0-100), written with one decimal and sorted by x
then y, so an answer has exactly one spelling and the model never has to guess an order:

    <point x="61.5" y="40.6" alt="blue triangle">blue triangle</point>
    <points x1="10.0" y1="20.5" x2="61.5" y2="40.6" alt="blue triangle">blue triangle</points>
    Counting the <points ...>blue triangle</points> shows a total of 2.
    There are none.

The format follows allenai/molmo `olmo/data/data_formatter.py` (`points_to_text`, `format_points`). The parser
is stricter than Molmo's `olmo/util.py::extract_points`, which pulls any x="..", y=".." pair it can find: here a
broken tag makes the whole answer malformed (None), so evaluation can score it 0 instead of guessing.
"""

from __future__ import annotations

import re

NONE_ANSWER = "There are none."

# A whole tag, opening to matching close; its attributes and label are checked after the match.
_TAG = re.compile(r"<(points?)(\s[^<>]*)?>[^<>]*</\1>")
# Any piece of a point tag: left over once the whole tags are cut out, it means a broken or unclosed tag.
_TAG_FRAGMENT = re.compile(r"</?points?\b")
_ATTRIBUTE = re.compile(r'\s+([A-Za-z]\w*)="([^"]*)"')
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Molmo's PointCountEval reads these, in this order, from the lower-cased answer (see parse_count).
_DIGITS = re.compile(r"[0-9]+")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
_TOTAL = re.compile(r"a total of ([0-9]+)")
_NONE = re.compile(r"\bnone\b", re.IGNORECASE)


def _rounded_sorted(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Round to one decimal before sorting, so the written order is the order of the written numbers."""
    for x, y in points:
        if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
            raise ValueError(f"point ({x}, {y}) is outside the image; x and y must be percentages in [0, 100]")
    return sorted((round(float(x), 1), round(float(y), 1)) for x, y in points)


def _check_alt(alt: str) -> None:
    """An alt holding a quote or angle bracket would make the tag unparseable."""
    if not alt or any(ch in alt for ch in '"<>'):
        raise ValueError(f"alt {alt!r} must be non-empty and free of '\"', '<' and '>'")


def format_points(points: list[tuple[float, float]], alt: str) -> str:
    """The pointing answer: one <point> tag, one <points> tag for several, or "There are none." for none."""
    if not points:
        return NONE_ANSWER
    _check_alt(alt)
    ordered = _rounded_sorted(points)
    if len(ordered) == 1:
        x, y = ordered[0]
        return f'<point x="{x:.1f}" y="{y:.1f}" alt="{alt}">{alt}</point>'
    coords = " ".join(f'x{i}="{x:.1f}" y{i}="{y:.1f}"' for i, (x, y) in enumerate(ordered, start=1))
    return f'<points {coords} alt="{alt}">{alt}</points>'


def format_count(points: list[tuple[float, float]], alt: str) -> str:
    """The counting answer: point at every object first, then state the total, as Molmo's counting data does."""
    if not points:
        return NONE_ANSWER
    return f"Counting the {format_points(points, alt)} shows a total of {len(points)}."


def parse_points(text: str) -> list[tuple[float, float]] | None:
    """Every point in `text`, in percent and in written order; [] when it has no point tags (as in "There are
    none."); None when any tag is malformed, so that evaluation can score broken output 0 rather than guess."""
    points: list[tuple[float, float]] = []
    for match in _TAG.finditer(text):
        tag_points = _tag_points(match.group(1), match.group(2) or "")
        if tag_points is None:
            return None
        points.extend(tag_points)
    if _TAG_FRAGMENT.search(_TAG.sub("", text)):
        return None
    return points


def parse_labels(text: str) -> list[str]:
    """The `alt` label of every well-formed point tag in `text`, in written order: what the model says it points at."""
    labels = []
    for match in _TAG.finditer(text):
        attributes = _attributes(match.group(2) or "")
        if attributes and "alt" in attributes:
            labels.append(attributes["alt"])
    return labels


def _tag_points(name: str, attribute_text: str) -> list[tuple[float, float]] | None:
    """The points of one tag's attributes, or None unless they are exactly x, y, alt (for <point>) or
    x1, y1, ..., xn, yn, alt (for <points>), each coordinate a plain number in [0, 100]."""
    attributes = _attributes(attribute_text)
    if attributes is None or "alt" not in attributes:
        return None
    coords = {key: value for key, value in attributes.items() if key != "alt"}
    if name == "point":
        keys = [("x", "y")]
    else:
        keys = [(f"x{i}", f"y{i}") for i in range(1, len(coords) // 2 + 1)]
    if not keys or set(coords) != {key for pair in keys for key in pair}:
        return None
    points = [(_percent(coords[x_key]), _percent(coords[y_key])) for x_key, y_key in keys]
    if any(x is None or y is None for x, y in points):
        return None
    return points


def _attributes(attribute_text: str) -> dict[str, str] | None:
    """name -> value for text like ' x="1.0" alt="a"'; None if anything else is in it or a name repeats."""
    pairs = _ATTRIBUTE.findall(attribute_text)
    if _ATTRIBUTE.sub("", attribute_text).strip() or len({name for name, _ in pairs}) != len(pairs):
        return None
    return dict(pairs)


def _percent(value: str) -> float | None:
    """A coordinate as a float, or None unless it is a plain decimal number within 0-100."""
    value = value.strip()
    if not _NUMBER.fullmatch(value) or float(value) > 100.0:
        return None
    return float(value)


def parse_count(text: str) -> int | None:
    """The count an answer states, read as Molmo's PointCountEval reads it: the last word as a number ("... shows a
    total of 3.", "There are 3."), else "a total of N" anywhere, else 0 for "none"; None when it states no count.

    Only the words count, never the points: an answer listing three points and stating no total gives None, and a
    broken tag does not void "a total of 3." (pointing scores that answer 0 instead)."""
    text = text.strip().lower().rstrip(".").strip()
    last = text.split()[-1].strip(". ") if text else ""
    if _DIGITS.fullmatch(last):
        return int(last)
    if last in _NUMBER_WORDS:
        return _NUMBER_WORDS.index(last)
    for pattern in (_TOTAL, _NONE):
        match = pattern.search(text)
        if match:
            return int(match.group(1)) if match.groups() else 0
    return None
