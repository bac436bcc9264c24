"""LR-transfer and duration analysis on fake sweeps whose loss is a known parabola in log2(LR)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from kiln.errors import KilnError
from kiln.mup import DEFAULT_BETA, lr_for_tokens
from kiln.mup.report import write_duration_report, write_transfer_report
from kiln.mup.transfer import (
    collect_points,
    duration_fit,
    fit_optimum,
    grid_factor,
    shift_in_grid_steps,
    transfer_table,
    width_slope,
)
from kiln.train.config import load_config

LR0 = 1e-2 * 2**0.3  # planted optimum at d_model=64, deliberately between grid points
CURVATURE = 0.05  # loss rise per (log2 LR step)^2
STEPS = 20
TOKENS_PER_STEP = 512


def parabola(lr: float, lr_star: float, floor: float = 3.0) -> float:
    return floor + CURVATURE * (math.log2(lr) - math.log2(lr_star)) ** 2


def grid_around(center: float, below: int = 4, above: int = 4) -> list[float]:
    """Powers of 2 times 1e-2 from `below` steps under `center` to `above` over it."""
    k = round(math.log2(center / 1e-2))
    return [1e-2 * 2.0**i for i in range(k - below, k + above + 1)]


def write_fake_run(run: Path, *, d_model: int, lr: float, val_loss: float | None, parametrization: str | None,
                   seed: int = 0, steps: int = STEPS, last_step: int = STEPS) -> Path:
    """A run folder as `kiln sweep` leaves it: config.yaml and metrics.jsonl ending in `val_loss` at `last_step`."""
    run.mkdir(parents=True)
    model = {"d_model": d_model, "n_layers": 2}
    if parametrization is not None:
        model.update(parametrization=parametrization, mup_base_d_model=64)
    config = {"model": model, "optim": {"lr": lr}, "trainer": {"steps": steps, "seed": seed}, "data": {}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"step": s, "loss": 4.0, "tokens": TOKENS_PER_STEP * s} for s in range(1, last_step + 1)]
    if val_loss is not None:
        records[-1]["val_loss"] = val_loss
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def write_width_sweep(root: Path, widths=(64, 128, 256, 512)) -> Path:
    """standard: optimum at LR0 * 64/d (moves 1 grid step per doubling); muP: optimum at LR0 for every width."""
    for param, shrink in (("standard", 1.0), ("mup", 0.0)):
        for d in widths:
            lr_star = LR0 * (64 / d) ** shrink
            for lr in grid_around(lr_star):
                name = f"{param}_d{d}_lr{lr:.3g}"
                write_fake_run(root / name, d_model=d, lr=lr, val_loss=parabola(lr, lr_star, 3.0 + 64 / d),
                               parametrization=None if param == "standard" else param)
    (root / "summary.csv").write_text("name\n")
    (root / "mup").mkdir()  # a non-run folder, as a previous report leaves
    return root


def write_duration_sweep(root: Path, beta: float = 0.35, widths=(128,), seed_noise: tuple[float, ...] = (0.0,)
                         ) -> Path:
    """Optimal LR planted at 1e-2 * (D/1e5)^-beta for D = 1e5, 4e5, 1.6e6 tokens, on a factor-2 grid around it;
    one seed per entry of `seed_noise`, each seed's loss shifted by that much times a fixed pseudo-random sign."""
    signs = np.random.default_rng(3).choice([-1.0, 1.0], size=1000)
    for d_model in widths:
        for tokens in (1e5, 4e5, 1.6e6):
            steps = round(tokens / TOKENS_PER_STEP)
            lr_star = 1e-2 * (steps * TOKENS_PER_STEP / 1e5) ** -beta  # the tokens the run reports
            for i, lr in enumerate(grid_around(lr_star, 3, 3)):
                for seed, noise in enumerate(seed_noise):
                    loss = parabola(lr, lr_star) + noise * signs[(7 * i + 13 * seed + steps) % 1000]
                    write_fake_run(root / f"d{d_model}_s{steps}_lr{lr:.3g}_seed{seed}", d_model=d_model, lr=lr,
                                   steps=steps, last_step=steps, val_loss=loss, parametrization="mup", seed=seed)
    return root


def test_fit_optimum_recovers_exact_vertex():
    lr_star = 2**-6.3
    lrs = [2.0**k for k in range(-10, -2)]
    opt = fit_optimum(lrs, [parabola(lr, lr_star) for lr in lrs])
    assert opt.lr == pytest.approx(lr_star, rel=1e-6)
    assert opt.loss == pytest.approx(3.0, abs=1e-9)
    assert (opt.best_grid_lr, opt.at_edge, opt.n_points) == (2.0**-6, False, 5)


def test_fit_optimum_with_noise_stays_within_a_grid_step():
    rng = np.random.default_rng(1)
    lrs = [2.0**k for k in range(-10, -2)]
    for lr_star in (2**-6.3, 2**-5.5, 2**-7.8):
        for _ in range(20):
            losses = [parabola(lr, lr_star) + rng.normal(0, 0.01) for lr in lrs]
            assert abs(math.log2(fit_optimum(lrs, losses).lr / lr_star)) < 1


def test_fit_optimum_at_edge_is_a_bound():
    lrs = [2.0**k for k in range(-8, -3)]
    opt = fit_optimum(lrs, [parabola(lr, 2**-11) for lr in lrs])
    assert opt.at_edge and opt.best_grid_lr == 2**-8
    assert opt.lr == pytest.approx(2**-8)  # clamped to the fitted range: no extrapolation


def test_fit_optimum_excludes_diverged_points():
    lrs = [2.0**k for k in range(-10, -2)]
    losses = [parabola(lr, 2**-5.2) for lr in lrs]
    losses[-1], losses[-2] = None, float("nan")  # the two largest LRs diverged
    opt = fit_optimum(lrs, losses)
    assert not opt.at_edge  # the best finite point is interior: a diverged LR is worse than it
    assert opt.best_grid_lr == 2**-5 and opt.n_points == 3  # 2**-5 and two finite neighbours below
    assert opt.lr == pytest.approx(2**-5.2, rel=1e-6)
    losses[2] = float("inf")
    assert fit_optimum(lrs, losses).n_points == 3


def test_fit_optimum_falls_back_to_best_grid_point():
    two = fit_optimum([1e-3, 2e-3, 4e-3], [3.2, 3.1, None])
    assert (two.lr, two.loss, two.n_points, two.at_edge) == (2e-3, 3.1, 1, False)
    concave = fit_optimum([1e-3, 2e-3, 4e-3, 8e-3], [3.0, 3.5, 3.6, 3.4])
    assert (concave.lr, concave.n_points, concave.at_edge) == (1e-3, 1, True)
    with pytest.raises(ValueError, match="diverged"):
        fit_optimum([1e-3, 2e-3], [None, float("nan")])


def test_collect_points_reads_configs_and_marks_divergence(tmp_path):
    write_fake_run(tmp_path / "ok", d_model=64, lr=1e-3, val_loss=3.5, parametrization="mup", seed=3)
    write_fake_run(tmp_path / "nan", d_model=64, lr=2e-3, val_loss=float("nan"), parametrization="mup")
    write_fake_run(tmp_path / "noval", d_model=64, lr=4e-3, val_loss=None, parametrization="mup")
    stopped = write_fake_run(tmp_path / "stopped", d_model=64, lr=8e-3, val_loss=3.4, parametrization="mup",
                             last_step=5)
    (stopped / "train.log").write_text("kiln train: error: loss is nan at step 6; the last good checkpoint is ...\n")
    running = write_fake_run(tmp_path / "running", d_model=64, lr=1.6e-2, val_loss=3.4, parametrization="mup",
                             last_step=5)
    (running / "train.log").write_text("step 5/20 loss 3.4\n")
    write_fake_run(tmp_path / "old", d_model=32, lr=1e-3, val_loss=3.9, parametrization=None)
    (tmp_path / "notes").mkdir()
    unfinished = []
    points = {p.run.name: p for p in collect_points(tmp_path, unfinished)}
    assert sorted(points) == ["nan", "noval", "ok", "old", "stopped"]
    assert unfinished == [running]  # neither finished nor stopped by a non-finite loss: left out, not "diverged"
    ok = points["ok"]
    assert (ok.parametrization, ok.d_model, ok.lr, ok.seed, ok.val_loss) == ("mup", 64, 1e-3, 3, 3.5)
    assert ok.tokens == STEPS * TOKENS_PER_STEP
    assert all(points[n].val_loss is None for n in ("nan", "noval", "stopped"))
    assert points["stopped"].tokens == ok.tokens  # grouped with its siblings despite stopping early
    assert points["old"].parametrization == "standard"
    row = next(r for r in transfer_table(list(points.values())) if r["d_model"] == 64)
    assert (row["n_lrs"], row["n_diverged"], row["best_grid_lr"], row["at_edge"]) == (4, 3, 1e-3, True)


def test_no_run_folders_is_an_error(tmp_path):
    (tmp_path / "summary.csv").write_text("name\n")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "metrics.jsonl").write_text("")
    with pytest.raises(KilnError, match=str(tmp_path)):
        collect_points(tmp_path)


def test_transfer_recovers_planted_shift_and_slope(tmp_path):
    points = collect_points(write_width_sweep(tmp_path))
    rows = transfer_table(points)
    assert len(rows) == 8 and grid_factor(points) == pytest.approx(2.0)
    for row in rows:
        shrink = 1.0 if row["parametrization"] == "standard" else 0.0
        assert row["optimal_lr"] == pytest.approx(LR0 * (64 / row["d_model"]) ** shrink, rel=1e-6)
        assert row["loss_at_optimum"] == pytest.approx(3.0 + 64 / row["d_model"], abs=1e-9)
        assert not row["at_edge"] and row["n_diverged"] == 0
    standard = [r for r in rows if r["parametrization"] == "standard"]
    mup = [r for r in rows if r["parametrization"] == "mup"]
    assert shift_in_grid_steps(standard, 2.0) == pytest.approx(3.0)  # 64 -> 512 is three doublings
    assert shift_in_grid_steps(mup, 2.0) == pytest.approx(0.0, abs=1e-6)
    assert width_slope(standard) == pytest.approx(-1.0, abs=1e-6)
    assert width_slope(mup) == pytest.approx(0.0, abs=1e-6)


def test_seeds_are_averaged_and_one_diverged_seed_diverges_the_lr(tmp_path):
    lrs = grid_around(LR0)
    for seed, offset in ((0, -0.1), (1, 0.1)):
        for lr in lrs:
            loss = None if (seed == 1 and lr == lrs[-1]) else parabola(lr, LR0) + offset
            write_fake_run(tmp_path / f"s{seed}_lr{lr:.3g}", d_model=64, lr=lr, val_loss=loss, parametrization="mup",
                           seed=seed)
    (row,) = transfer_table(collect_points(tmp_path))
    assert row["optimal_lr"] == pytest.approx(LR0, rel=1e-6)
    assert row["loss_at_optimum"] == pytest.approx(3.0, abs=1e-9)
    assert (row["n_lrs"], row["n_diverged"]) == (len(lrs), 1)


def test_duration_fit_recovers_planted_beta(tmp_path):
    fit = duration_fit(collect_points(write_duration_sweep(tmp_path, beta=0.35)))
    assert (fit.d_model, fit.parametrization) == (128, "mup")
    assert [r["D"] for r in fit.rows] == [round(d / TOKENS_PER_STEP) * TOKENS_PER_STEP for d in (1e5, 4e5, 1.6e6)]
    assert fit.beta == pytest.approx(0.35, abs=0.05)
    assert fit.beta_interval[0] <= 0.35 <= fit.beta_interval[1]
    assert fit.beta_stderr is not None and fit.beta_stderr < 0.01  # exact parabolas: a near-perfect line
    assert 0 < fit.beta_boot_std < 0.5
    assert not any(r["at_edge"] for r in fit.rows)
    assert fit.B * 1e5 ** (-fit.beta) == pytest.approx(1e-2, rel=1e-6)


def test_duration_fit_needs_one_width_and_parametrization(tmp_path):
    points = collect_points(write_duration_sweep(tmp_path, widths=(64, 128)))
    with pytest.raises(KilnError, match=r"d_model=64.*d_model=128"):
        duration_fit(points)
    assert duration_fit(points, d_model=64, parametrization="mup").d_model == 64
    with pytest.raises(KilnError, match="d_model=96"):
        duration_fit(points, d_model=96)


def test_lr_for_tokens():
    assert lr_for_tokens(1e-2, 1e5, 1.6e6, 0.25) == pytest.approx(5e-3)
    assert lr_for_tokens(1e-2, 1e5, 1e5) == pytest.approx(1e-2)
    assert lr_for_tokens(1e-2, 1e5, 2e5) == pytest.approx(1e-2 * 2**-DEFAULT_BETA)
    for args, name in (((0.0, 1e5, 1e6), "lr_at_D0"), ((1e-2, -1.0, 1e6), "D0"), ((1e-2, 1e5, 0), "D")):
        with pytest.raises(ValueError, match=name):
            lr_for_tokens(*args)


def test_transfer_report_writes_md_json_png(tmp_path):
    sweep = write_width_sweep(tmp_path / "sweep")
    md, text = write_transfer_report(sweep)
    out = sweep / "mup"
    assert md == out / "transfer.md" and md.read_text() == text
    assert (out / "transfer.png").stat().st_size > 0
    for param in ("standard", "mup"):
        for d in (64, 128, 256, 512):
            assert text.count(f"| {param} | {d} |") == 1
    assert "standard: optimal LR moves by 3.00 grid steps (factor 8) across d_model 64..512" in text
    assert "slope of log2 LR* vs log2 width: -1.00" in text
    data = json.loads((out / "transfer.json").read_text())
    assert len(data["rows"]) == 8 and {s["parametrization"] for s in data["summary"]} == {"standard", "mup"}


def test_duration_report_writes_md_json_png(tmp_path):
    sweep = write_duration_sweep(tmp_path / "sweep")
    md, text = write_duration_report(sweep, out_dir=tmp_path / "out")
    assert md == tmp_path / "out" / "duration.md" and (tmp_path / "out" / "duration.png").stat().st_size > 0
    assert "beta = 0.35 ± 0.00 (OLS stderr)" in text and "bootstrap 16-84%" in text
    assert text.count("| no |") == 3
    data = json.loads((tmp_path / "out" / "duration.json").read_text())
    assert data["beta"] == pytest.approx(0.35, abs=1e-6) and len(data["rows"]) == 3


def test_collect_points_reads_the_config_kiln_train_writes(tmp_path):
    """kiln train records a preset and its overrides, not plain fields: the width comes from resolving them."""
    run = write_fake_run(tmp_path / "sweep" / "a", d_model=64, lr=1.0, val_loss=3.0, parametrization=None)
    cfg = load_config(None, {"model": {"preset": "olmo2-tiny", "d_model": 96, "parametrization": "mup",
                                       "mup_base_d_model": 32}, "optim": {"lr": 2e-3},
                             "trainer": {"steps": STEPS, "seed": 3}})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert "overrides" in yaml.safe_load((run / "config.yaml").read_text())["model"]
    [point] = collect_points(tmp_path / "sweep")
    assert (point.parametrization, point.d_model, point.lr, point.seed, point.val_loss) == ("mup", 96, 2e-3, 3, 3.0)


def test_seed_bootstrap_gives_intervals_that_widen_with_seed_noise(tmp_path):
    """Two seeds that agree leave no doubt about the optimum; two that disagree widen its interval and beta's."""
    quiet = collect_points(write_duration_sweep(tmp_path / "quiet", seed_noise=(0.0, 0.0)))
    noisy = collect_points(write_duration_sweep(tmp_path / "noisy", seed_noise=(0.0, 0.04)))
    for row in transfer_table(quiet):
        assert row["n_seeds"] == 2
        assert row["optimal_lr_16"] == pytest.approx(row["optimal_lr"]) == pytest.approx(row["optimal_lr_84"])
    rows = transfer_table(noisy)
    assert all(r["optimal_lr_16"] <= r["optimal_lr"] * 1.0001 and r["optimal_lr_84"] >= r["optimal_lr"] * 0.9999
               for r in rows)
    assert any(r["optimal_lr_84"] / r["optimal_lr_16"] > 1.05 for r in rows)
    fit_quiet, fit_noisy = duration_fit(quiet), duration_fit(noisy)
    assert fit_quiet.bootstrap == fit_noisy.bootstrap == "2 seeds redrawn"
    assert fit_quiet.beta == pytest.approx(0.35, abs=1e-6) and fit_quiet.beta_boot_std < 1e-9
    assert fit_noisy.beta_boot_std > 0.005
    assert fit_noisy.beta_interval[0] - 0.05 <= 0.35 <= fit_noisy.beta_interval[1] + 0.05


def test_one_seed_transfer_rows_have_no_interval(tmp_path):
    rows = transfer_table(collect_points(write_width_sweep(tmp_path / "sweep")))
    assert all(r["n_seeds"] == 1 and r["optimal_lr_16"] is None and r["optimal_lr_84"] is None for r in rows)


def test_cli_transfer_and_duration_print_their_tables(tmp_path, capsys):
    from kiln.cli import main

    width_sweep = write_width_sweep(tmp_path / "width")
    assert main(["mup", "transfer", str(width_sweep)]) == 0
    printed = capsys.readouterr().out
    assert "| mup | 512 |" in printed and f"wrote {width_sweep / 'mup' / 'transfer.md'}" in printed
    duration_sweep = write_duration_sweep(tmp_path / "duration", widths=(64, 128))
    assert main(["mup", "duration", str(duration_sweep)]) == 2  # two widths: which one?
    assert "d_model=64" in capsys.readouterr().err
    assert main(["mup", "duration", str(duration_sweep), "--d-model", "128", "--out", str(tmp_path / "d")]) == 0
    assert "beta = 0.35" in capsys.readouterr().out and (tmp_path / "d" / "duration.png").is_file()


def test_duration_fit_can_leave_out_the_shortest_runs(tmp_path):
    points = collect_points(write_duration_sweep(tmp_path / "sweep"))
    fit = duration_fit(points, min_tokens=200_000)
    assert [r["D"] for r in fit.rows] == [399_872, 1_600_000]  # the 1e5-token runs left out
    assert fit.beta == pytest.approx(0.35, abs=0.02)
    with pytest.raises(KilnError, match="at least 10000000 tokens"):
        duration_fit(points, min_tokens=10_000_000)
