"""The reproduction suite (lbt.tools.reproduce): a tiny real digits run, and the table formatting."""

import json
import re

import jax
import numpy as np
import pytest

from lbt.errors import ConfigError
from lbt.tools import reproduce


def test_format_mean_std_known_numbers():
    # mean 0.99, sample std (ddof=1) 0.01, shown in percent
    assert reproduce.format_mean_std([0.98, 0.99, 1.0]) == "99.00 ± 1.00"
    assert reproduce.format_mean_std([0.5, 0.7]) == "60.00 ± 14.14"
    assert reproduce.format_mean_std([0.975]) == "97.50"  # one seed: no spread
    assert reproduce.format_mean_std([0.1, 0.3], scale=1.0, digits=3) == "0.200 ± 0.141"


def test_table_from_known_results():
    plan = lambda acc, steps: {  # noqa: E731
        "accuracy": acc,
        "loss": [0.1] * len(acc),
        "steps": [steps] * len(acc),
        "wall_s": [10.0] * len(acc),
        "batches": [16, 80],
        "lrs": [0.1, 0.1],
        "eval": {"epoch": [1.0], "step": [steps], "accuracy_mean": [float(np.mean(acc))], "accuracy_std": [0.0]},
        "train_loss": {"epoch": [0.5], "loss_mean": [0.2]},
    }
    results = {
        "suite": "x",
        "seeds": 3,
        "N": 100,
        "n_test": 50,
        "epochs": 1.0,
        "microbatch": 16,
        "plans": {"decay_lr": plan([0.98, 0.99, 1.0], 400), "increase_batch": plan([0.96, 0.97, 0.98], 100)},
    }
    table = reproduce.results_table(results)
    assert "| decay_lr | 16 → 80 | 0.1 → 0.1 | 99.00 ± 1.00 |" in table
    assert "| 400 | 1.000 |" in table and "| 100 | 0.250 |" in table
    notes = reproduce.observations(results)
    assert any("-2.00 pp" in n and "4.00× fewer" in n for n in notes)


def test_mnist_suite_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        reproduce.suite_configs("mnist", data=str(tmp_path / "missing.npz"))


def test_suite_configs_equal_epochs_and_schedule():
    cfgs = reproduce.suite_configs("digits", epochs=3.0)
    assert set(cfgs) == {*reproduce.PLANS, "adaptive"}
    s = {p: c.schedule for p, c in cfgs.items()}
    # adaptive starts at B0 = 2M with 2 ε0: the same g as the others
    assert (s["adaptive"].global_batch, s["adaptive"].base_lr) == (32, 0.8) and s["adaptive"].batch.mode == "adaptive"
    for p in reproduce.PLANS:
        assert s[p].batch.mode == p
        for key in ("epochs", "base_lr", "momentum", "global_batch"):
            assert s[p][key] == s["decay_lr"][key]
        assert tuple(s[p].lr.milestones) == tuple(s["decay_lr"].lr.milestones)
        assert s[p].lr.factor == s["decay_lr"].lr.factor
    full = reproduce.suite_configs("digits")["decay_lr"].schedule
    ratio = 3.0 / full.epochs
    assert np.allclose(s["decay_lr"].lr.milestones, [m * ratio for m in full.lr.milestones])


def test_scale_epochs_scales_milestones_and_warmup():
    base = reproduce.suite_configs("digits")["decay_lr"]
    with base.unlocked():
        base.schedule.lr.warmup_epochs = 3.0
    short = reproduce.scale_epochs(base, 10.0)
    assert short.schedule.epochs == 10.0
    assert tuple(short.schedule.lr.milestones) == pytest.approx((3.0, 6.0, 8.0))  # 9/18/24 of 30
    assert short.schedule.lr.warmup_epochs == pytest.approx(1.0)
    assert base.schedule.epochs == 30.0 and tuple(base.schedule.lr.milestones) == (9.0, 18.0, 24.0)  # not mutated


def test_scale_epochs_scales_momentum_milestones():
    """Stepped momentum is a schedule over epochs too: its milestones scale with the LR's."""
    from lbt.schedules.plan import make_plan

    base = reproduce.suite_configs("digits")["hybrid"]
    with base.unlocked():
        base.schedule.momentum_schedule.milestones = (15.0, 27.0)
        base.schedule.momentum_schedule.values = (0.95, 0.975)
    short = reproduce.scale_epochs(base, 10.0)
    assert tuple(short.schedule.momentum_schedule.milestones) == pytest.approx((5.0, 9.0))
    assert tuple(short.schedule.momentum_schedule["values"]) == (0.95, 0.975)
    assert tuple(base.schedule.momentum_schedule.milestones) == (15.0, 27.0)  # not mutated
    plan = make_plan(short, 1438)  # unscaled milestones (past 10 epochs) would be a ConfigError
    assert plan.at(round(5.0 * 1438) - 1).momentum == 0.9 and plan.at(round(5.0 * 1438)).momentum == 0.95


def test_digits_suite_plans_step_counts():
    """The step counts the config docstring and docs/reproduction.md state (N = 1,438, M = 16)."""
    from lbt.schedules.plan import make_plan

    cfgs = reproduce.suite_configs("digits")
    steps = {p: make_plan(c, 1438).total_steps() for p, c in cfgs.items()}
    # adaptive: the plan is its decay_lr reference at B0 = 2M (the trainer grows B)
    assert steps == {"decay_lr": 2697, "increase_batch": 999, "hybrid": 1106, "adaptive": 1349}
    # increase_batch would reach 2,000 > N: capped at N rounded down to M (1,424), ε absorbs the rest
    grown = make_plan(cfgs["increase_batch"], 1438).phases
    assert [ph.global_batch for ph in grown] == [16, 80, 400, 1424]
    assert grown[-1].lr_start == pytest.approx(0.4 * 1424 / 2000)
    assert [ph.global_batch for ph in make_plan(cfgs["hybrid"], 1438).phases] == [16, 80, 128, 128]
    # mnist (stated in configs/reproduce_mnist.py): N = 8,000 of the 10k rows, B_max = 800.
    mnist = reproduce._load_file("reproduce_mnist.py")
    steps = {}
    for p in reproduce.PLANS:
        with mnist.unlocked():
            mnist.schedule.batch.mode = p
        steps[p] = make_plan(mnist, 8000).total_steps()
    assert steps == {"decay_lr": 2500, "increase_batch": 924, "hybrid": 940}


def test_cifar10_suite_uses_the_recipe_files_unchanged():
    """`--suite cifar10` trains configs/cifar10_wrn16_4_{decay_lr,increase_batch,hybrid}.py as they
    are (only the progress bar is off); no data is needed to build the suite."""
    from lbt.config import load_config, to_json
    from lbt.schedules.plan import make_plan

    cfgs = reproduce.suite_configs("cifar10")
    assert set(cfgs) == set(reproduce.PLANS)
    for plan, c in cfgs.items():
        recipe = load_config(str(reproduce.CONFIGS / f"cifar10_wrn16_4_{plan}.py"))
        with recipe.unlocked():
            recipe.train.progress = False
        assert to_json(c) == to_json(recipe)
        assert c.schedule.batch.mode == plan and c.schedule.epochs == 200.0
    # (The recipes' step counts are asserted in tests/test_recipes.py.) Growing B means fewer updates.
    steps = {p: make_plan(c, 50_000).total_steps() for p, c in cfgs.items()}
    assert steps["increase_batch"] < steps["decay_lr"] and steps["hybrid"] < steps["decay_lr"]
    # --data is the tfds data_dir, and nothing else changes.
    moved = reproduce.suite_configs("cifar10", data="/data/tfds")
    for plan, c in moved.items():
        assert c.dataset.data_dir == "/data/tfds"
        with c.unlocked():
            c.dataset.data_dir = cfgs[plan].dataset.data_dir
        assert to_json(c) == to_json(cfgs[plan])


def test_mnist_suite_takes_the_data_path(tmp_path):
    f = tmp_path / "tiny.npz"
    np.savez(f, images=np.zeros((100, 28, 28), np.uint8), labels=np.arange(100) % 10)
    cfgs = reproduce.suite_configs("mnist", data=str(f))
    assert {c.dataset.path for c in cfgs.values()} == {str(f)}
    assert [c.schedule.batch.mode for c in cfgs.values()] == [*reproduce.PLANS, "adaptive"]


def _fake_run(d, plan: str, seed: int, acc: float, steps: int, batches: list[int]) -> None:
    """A finished run's files as the trainer writes them (summary, config, metrics)."""
    d.mkdir(parents=True)
    (d / "summary.json").write_text(
        json.dumps(
            {
                "final_eval_accuracy": acc,
                "final_eval_loss": 1 - acc,
                "optimizer_steps": steps,
                "wall_s": 10.0 + seed,
                "train_compilations": 2,
            }
        )
    )
    (d / "config.json").write_text(json.dumps({"schedule": {"epochs": 2.0}, "train": {"global_microbatch": 10}}))
    recs, seen = [], 0
    for i in range(steps):
        B = batches[min(i * len(batches) // steps, len(batches) - 1)]
        seen += B
        recs.append(
            {
                "step": i + 1,
                "examples_seen": seen,
                "epoch": seen / 100,
                "global_batch": B,
                "lr": 0.1,
                "loss": 1.0 / (i + 1),
            }
        )
        if i + 1 in (steps // 2, steps):
            recs.append(
                {
                    "split": "test",
                    "step": i + 1,
                    "epoch": seen / 100,
                    "accuracy": acc - (0.1 if i + 1 < steps else 0),
                    "count": 50,
                }
            )
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_collect_table_and_plot_on_synthetic_runs(tmp_path):
    accs = {"decay_lr": [0.9, 0.92], "increase_batch": [0.88, 0.9], "hybrid": [0.9, 0.9]}
    steps = {"decay_lr": 20, "increase_batch": 8, "hybrid": 10}
    batches = {"decay_lr": [10], "increase_batch": [10, 50], "hybrid": [10, 20]}
    for plan in reproduce.PLANS:
        for seed in range(2):
            _fake_run(
                reproduce.run_dir(tmp_path, "x", plan, seed), plan, seed, accs[plan][seed], steps[plan], batches[plan]
            )
    res = reproduce.collect(tmp_path, "x", 2)
    assert res["N"] == 100 and res["n_test"] == 50 and res["epochs"] == 2.0 and res["microbatch"] == 10
    assert res["plans"]["increase_batch"]["batches"] == [10, 50]
    assert res["plans"]["decay_lr"]["eval"]["accuracy_mean"] == pytest.approx([0.81, 0.91])
    table = reproduce.results_table(res)
    assert "| decay_lr | 10 | 0.1 | 91.00 ± 1.41 |" in table
    assert "| 8 | 0.400 |" in table and "| 10 | 0.500 |" in table
    notes = reproduce.observations(res)
    assert any("`increase_batch` vs `decay_lr`: final accuracy -2.00 pp" in n and "2.50× fewer" in n for n in notes)
    png = reproduce.plot_suite(res, tmp_path / "img" / "r.png")
    assert png.is_file() and png.stat().st_size > 10_000


def test_collect_skips_event_records(tmp_path):
    """metrics.jsonl of a resumed, rolled-back or preempted run holds event records (no loss, B or
    lr); collect reads only the train records, so the results equal those of a clean run."""
    batches = {"decay_lr": [10], "increase_batch": [10, 50], "hybrid": [10, 20]}
    steps = {"decay_lr": 20, "increase_batch": 8, "hybrid": 10}
    for root in ("clean", "events"):
        for plan in reproduce.PLANS:
            _fake_run(reproduce.run_dir(tmp_path / root, "x", plan, 0), plan, 0, 0.9, steps[plan], batches[plan])
    metrics = reproduce.run_dir(tmp_path / "events", "x", "increase_batch", 0) / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    events = [
        {"event": "resume", "step": 3, "examples_seen": 30, "epoch": 0.3},
        {
            "event": "rollback",
            "bad_step": 5,
            "skipped_window": [40, 50],
            "restored_step": 4,
            "examples_seen": 40,
            "rollbacks": 1,
        },
        {"event": "preempted", "step": 6, "examples_seen": 60},
    ]
    metrics.write_text(
        "".join([json.dumps(events[0]) + "\n"] + lines[:3] + [json.dumps(e) + "\n" for e in events] + lines[3:])
    )
    assert reproduce.collect(tmp_path / "events", "x", 1) == reproduce.collect(tmp_path / "clean", "x", 1)


def test_digits_suite_tiny_run(tmp_path):
    """1 seed, 1 epoch, 1 device, decay_lr and hybrid (increase_batch is checked at the plan
    level above): the table equals the runs' summary.json, the PNG is real."""
    work, out = tmp_path / "runs", tmp_path / "docs"
    plans = ("decay_lr", "hybrid")
    results = reproduce.run_suite(
        "digits", seeds=1, workdir=work, epochs=1.0, eval_every_epochs=0.25, devices=jax.devices()[:1], plans=plans
    )
    md, png = reproduce.report(
        results,
        out,
        command="lbt reproduce --suite digits --seeds 1 --epochs 1",
        machine="test",
        date="2026-11-23",
        wall_s=1.0,
    )
    text = md.read_text()
    assert "<!-- lbt reproduce: digits begin -->" in text
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in reproduce.PLANS:
            rows[cells[0]] = cells
    assert set(rows) == set(plans)
    steps = {}
    for plan, cells in rows.items():
        summary = json.loads((reproduce.run_dir(work, "digits", plan, 0) / "summary.json").read_text())
        steps[plan] = summary["optimizer_steps"]
        assert int(cells[5]) == summary["optimizer_steps"]  # exact
        assert float(cells[3]) == pytest.approx(100 * summary["final_eval_accuracy"], abs=0.005)
        assert float(cells[6]) == pytest.approx(
            summary["optimizer_steps"] / steps.get("decay_lr", summary["optimizer_steps"]), abs=5e-4
        )
        # growing B compiles nothing new: final (k = 1), plus accum once k > 1
        assert summary["train_compilations"] == (1 if plan == "decay_lr" else 2)
    assert steps["hybrid"] < steps["decay_lr"]
    # The batch grows and is capped at B_max = N/10 floored to M (hybrid).
    assert rows["hybrid"][1] != rows["decay_lr"][1]
    assert max(int(b) for b in re.findall(r"\d+", rows["hybrid"][1])) <= 1438 // 10
    # Curves: several evals per run, and a real image.
    assert len(results["plans"]["decay_lr"]["eval"]["epoch"]) >= 4
    assert png.is_file() and png.stat().st_size > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 600 and float(np.std(img)) > 0.05
    # Rewriting the report replaces the suite's section instead of appending a second one.
    reproduce.report(results, out, command="again", machine="test", date="2026-11-23", wall_s=1.0)
    assert md.read_text().count("<!-- lbt reproduce: digits begin -->") == 1
