"""`kiln report` on fake run folders whose spikes, norms and summary numbers are known in advance."""

from __future__ import annotations

import base64
import re

import pytest

from kiln.cli import main
from kiln.errors import KilnError
from kiln.experiments.report import plot_downstream, plot_layers, plot_loss, write_report
from kiln.experiments.runlog import read_run

from .conftest import fake_metrics, write_run

MONITOR_PNGS = {"loss", "grad_norm", "lr", "spike_score", "grad_norm_growth", "layer_grad_norm", "layer_weight_norm",
                "layer_update_ratio", "layer_act_rms", "layer_act_max", "layer_attn_logit_max", "output_logit_max"}


def summary_table(page: str) -> list[dict[str, str]]:
    """The first table of the page as {heading: cell text} per row."""
    table = page.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    headings = re.findall(r"<th>(.*?)</th>", table)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1])
    return [dict(zip(headings, re.findall(r"<td>(.*?)</td>", row))) for row in rows]


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_writes_every_plot_and_a_summary_with_the_runs_numbers(tmp_path):
    records = fake_metrics(40, loss_spikes={10, 25}, grad_spikes={10, 30, 31}, skipped={30}, layers=3)
    run = write_run(tmp_path / "spiky", records)
    (run / "rollbacks.jsonl").write_text('{"from_step": 31, "to_step": 20}\n')
    (run / "spikes").mkdir()
    (run / "spikes" / "step000010.json").write_text("{}")

    page_path = write_report([run], smooth=3)

    assert page_path == run / "report" / "report.html"
    pngs = {p.stem: p.read_bytes() for p in page_path.parent.glob("*.png")}
    assert set(pngs) == MONITOR_PNGS
    assert all(data.startswith(b"\x89PNG\r\n\x1a\n") for data in pngs.values())
    page = page_path.read_text()
    embedded = embedded_pngs(page)
    assert len(embedded) == len(MONITOR_PNGS) and embedded[0] == pngs["loss"]
    [row] = summary_table(page)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert row["run"] == "spiky"
    assert int(row["steps"]) == 40 and row["tokens"] == f"{512 * 40:,}"
    assert float(row["final loss"]) == pytest.approx(records[-1]["loss"], rel=1e-3)
    assert float(row["final val loss"]) == pytest.approx(val[-1], rel=1e-3)
    assert float(row["best val loss"]) == pytest.approx(min(val), rel=1e-3)
    assert float(row["spike score (cum.)"]) == pytest.approx(4 / 40, rel=1e-3)  # steps 10, 25, 30, 31
    assert (row["loss spikes"], row["grad-norm spikes"], row["skipped steps"]) == ("2", "3", "1")
    assert float(row["max grad norm"]) == pytest.approx(20 * (1 + 1 / 10), rel=1e-3)
    assert float(row["grad-norm growth (last)"]) == pytest.approx(-0.4, rel=1e-3)
    assert row["rollbacks"] == "1"
    assert 'href="../spikes/step000010.json"' in page


def test_a_run_without_monitor_keys_gets_the_basic_plots_and_blanks_not_zeros(tmp_path):
    run = write_run(tmp_path / "old", fake_metrics(12, monitor=False))
    page_path = write_report([run], tmp_path / "out")
    assert {p.stem for p in page_path.parent.glob("*.png")} == {"loss", "grad_norm", "lr"}
    [row] = summary_table(page_path.read_text())
    unlogged = ("spike score (cum.)", "loss spikes", "grad-norm spikes", "skipped steps", "grad-norm growth (last)")
    assert [row[heading] for heading in unlogged] == ["&ndash;"] * len(unlogged)
    assert row["rollbacks"] == "0"


def test_spike_markers_sit_on_the_spike_steps(tmp_path):
    records = fake_metrics(30, loss_spikes={7, 19})
    run = read_run(write_run(tmp_path / "a", records))
    ax = plot_loss([run]).axes[0]
    [markers] = [c for c in ax.collections if c.get_label() == "a loss spikes"]
    assert markers.get_offsets().tolist() == [[7, records[6]["loss"]], [19, records[18]["loss"]]]


def test_several_runs_overlay_in_one_axes_with_their_names_in_the_legend(tmp_path, monkeypatch):
    a = write_run(tmp_path / "lr-small", fake_metrics(20, loss_spikes={5}, layers=2))
    b = write_run(tmp_path / "lr-big", fake_metrics(20, layers=2, scale=2.0))
    runs = [read_run(a), read_run(b)]
    loss_fig = plot_loss(runs)
    assert len(loss_fig.axes) == 1
    labels = [t.get_text() for t in loss_fig.axes[0].get_legend().get_texts()]
    assert labels == ["lr-small", "lr-small (val)", "lr-small loss spikes", "lr-big", "lr-big (val)"]
    layer_ax = plot_layers(runs, "weight_norm", "weight norm").axes[0]
    assert [t.get_text() for t in layer_ax.get_legend().get_texts()] == ["lr-small", "lr-big"]
    assert len(layer_ax.get_lines()) == 4  # 2 layers x 2 runs

    monkeypatch.chdir(tmp_path)
    plain = [write_run(tmp_path / name, fake_metrics(10, monitor=False)) for name in ("plain-a", "plain-b")]
    page_path = write_report(plain)
    assert page_path.parent.parent.resolve() == (tmp_path / "reports").resolve()
    assert [row["run"] for row in summary_table(page_path.read_text())] == ["plain-a", "plain-b"]


def test_runs_with_the_same_folder_name_are_told_apart_by_their_parent(tmp_path):
    a = write_run(tmp_path / "sweep1" / "seed0", fake_metrics(5))
    b = write_run(tmp_path / "sweep2" / "seed0", fake_metrics(5))
    page = write_report([a, b], tmp_path / "out").read_text()
    assert [row["run"] for row in summary_table(page)] == ["sweep1/seed0", "sweep2/seed0"]


def test_steps_replayed_after_a_rollback_plot_once_but_their_spikes_still_count(tmp_path):
    first_pass = fake_metrics(8, grad_spikes={6}, loss_spikes={6})
    replay = fake_metrics(10, val_every=100)[4:]  # steps 5..10 again, calm this time
    run = read_run(write_run(tmp_path / "rolled", first_pass + replay))
    assert [r["step"] for r in run.records] == list(range(1, 11))
    assert run.records[5] == replay[1]
    assert plot_loss([run]).axes[0].get_lines()[0].get_xdata().tolist() == list(range(1, 11))
    row = summary_table(write_report([run.path], tmp_path / "out").read_text())[0]
    assert (row["loss spikes"], row["grad-norm spikes"]) == ("1", "1")
    assert float(row["max grad norm"]) == pytest.approx(first_pass[5]["grad_norm"], rel=1e-3)
    assert float(row["final loss"]) == pytest.approx(replay[-1]["loss"], rel=1e-3)


def test_a_sweep_folder_stands_for_the_runs_in_it(tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("optim.lr=1e-3__seed=0", "optim.lr=1e-2__seed=0"):
        write_run(sweep / name, fake_metrics(5))
    (sweep / "summary.csv").write_text("name\n")
    page_path = write_report([sweep])
    assert page_path == sweep / "report" / "report.html"
    rows = summary_table(page_path.read_text())
    assert [row["run"] for row in rows] == ["optim.lr=1e-2__seed=0", "optim.lr=1e-3__seed=0"]


def test_a_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path):
    run = write_run(tmp_path / "r", fake_metrics(4))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')
    assert [r["step"] for r in read_run(run).records] == [1, 2, 3, 4]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(KilnError, match="line 2 is not JSON"):
        read_run(run)


def test_a_folder_without_metrics_is_named_in_the_error(tmp_path, capsys):
    good = write_run(tmp_path / "good", fake_metrics(5))
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(KilnError, match=re.escape(f"{empty} has no metrics.jsonl")):
        write_report([good, empty], tmp_path / "out")
    assert main(["report", str(good), str(empty), "--out", str(tmp_path / "out")]) == 2
    assert str(empty) in capsys.readouterr().err


def test_cli_prints_where_the_report_is(tmp_path, capsys):
    run = write_run(tmp_path / "r", fake_metrics(5))
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--smooth", "2"]) == 0
    assert str(tmp_path / "out" / "report.html") in capsys.readouterr().out


def test_downstream_tasks_get_their_primary_metric_against_steps_with_the_chance_line(tmp_path):
    records = fake_metrics(12, monitor=False)
    for record in records:
        if record["step"] % 4 == 0:
            record.update({"downstream/arc_challenge_rc_5shot/acc_raw": 0.9,  # not the primary metric: not drawn
                           "downstream/arc_challenge_rc_5shot/acc_uncond": 0.2 + record["step"] / 100,
                           "downstream/arc_challenge_rc_5shot/chance": 0.25})
    run = write_run(tmp_path / "run", records)
    page_path = write_report([run])
    assert (page_path.parent / "downstream_arc_challenge_rc_5shot.png").is_file()

    ax = plot_downstream([read_run(run)], "arc_challenge_rc_5shot").axes[0]
    [curve, chance] = ax.get_lines()
    assert curve.get_xdata().tolist() == [4, 8, 12]
    assert curve.get_ydata().tolist() == pytest.approx([0.24, 0.28, 0.32])
    assert chance.get_linestyle() == "--" and list(chance.get_ydata()) == [0.25, 0.25]
    assert "acc_uncond" in ax.get_title()


def test_the_loss_axis_turns_logarithmic_only_when_the_losses_span_more_than_tenfold(tmp_path):
    falling = [{**r, "loss": 6.0 * 0.8 ** r["step"]} for r in fake_metrics(30, monitor=False)]  # 4.8 down to 0.007
    flat = [{**r, "loss": 4.0 - 0.02 * r["step"]} for r in fake_metrics(30, monitor=False)]
    assert plot_loss([read_run(write_run(tmp_path / "falling", falling))]).axes[0].get_yscale() == "log"
    assert plot_loss([read_run(write_run(tmp_path / "flat", flat))]).axes[0].get_yscale() == "linear"
