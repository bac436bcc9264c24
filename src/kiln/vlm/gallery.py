"""Images with points drawn on them, and the HTML gallery of an evaluation (eval/gallery.html)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

SCALE = 4  # 96 px scenes are drawn 4x larger so a point's marker does not hide the shape
PREDICTED, TRUE, HALO = (230, 30, 30), (20, 200, 60), (255, 255, 255)


def draw_points(image: Image.Image, predicted: list[tuple[float, float]] | None,
                true: Sequence[tuple[float, float]] = ()) -> Image.Image:
    """A SCALE-times larger copy with true points as green rings and predicted ones as red crosses (percent)."""
    big = image.convert("RGB").resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for colour, width in ((HALO, 7), (None, 3)):  # a white halo first, so a red cross shows on a red star
        for x, y in true:
            _ring(draw, x / 100 * big.width, y / 100 * big.height, colour or TRUE, width)
        for x, y in predicted or []:
            _cross(draw, x / 100 * big.width, y / 100 * big.height, colour or PREDICTED, width)
    return big


def _ring(draw: ImageDraw.ImageDraw, cx: float, cy: float, colour: tuple[int, int, int], width: int) -> None:
    r = 9 + (width - 3) // 2
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, colour: tuple[int, int, int], width: int) -> None:
    h = 7 + (width - 3) // 2  # a wider stroke reaches past the ends too: lines end flat
    draw.line([cx - h, cy - h, cx + h, cy + h], fill=colour, width=width)
    draw.line([cx - h, cy + h, cx + h, cy - h], fill=colour, width=width)


def write_gallery(out: Path, rows: list[dict], title: str) -> Path:
    """out/gallery.html over rows of {image (path relative to out), question, answer, truth, f1}."""
    cells = [_cell(row) for row in rows]
    page = ("<!doctype html><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif}}"
            "figure{{display:inline-block;width:300px;vertical-align:top;margin:6px}}code{{font-size:11px;"
            "word-break:break-all}}</style><h1>{t}</h1><p>green rings: true points; red crosses: the model's</p>"
            "{cells}").format(t=html.escape(title), cells="\n".join(cells))
    path = out / "gallery.html"
    path.write_text(page, encoding="utf-8")
    return path


def _cell(row: dict) -> str:
    f1 = "" if row.get("f1") is None else f"<br>F1 {row['f1']:.2f}"
    return (f"<figure><img src=\"{html.escape(row['image'])}\" width=\"288\"><figcaption><b>"
            f"{html.escape(row['question'])}</b><br>model: <code>{html.escape(row['answer'])}</code><br>truth: "
            f"<code>{html.escape(row['truth'])}</code>{f1}</figcaption></figure>")
