"""Invalid configs fail fast: one line naming the field and the fix, non-zero exit, no compile."""

import subprocess
import sys
import textwrap

import pytest

from lbt import cli
from lbt.config import apply_override, base_config, load_config
from lbt.errors import ConfigError
from lbt.train.compiles import CompileCounter


def run_cli(args, capsys):
    counter = CompileCounter()
    try:
        rc = cli.main(args)
    finally:
        counter.close()
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("lbt: error:")]
    return rc, errors, counter.total


CASES = [
    (["--config.model.widht=3"], "config.model.widht: unknown key 'widht'; valid keys here:", "width"),
    (["--config.schedule.base_lr=0"], "config.schedule.base_lr:", "> 0"),
    (["--config.schedule.base_lr=-0.5"], "config.schedule.base_lr:", "> 0"),
    (
        [
            "--config.train.global_microbatch=60",
            "--config.schedule.global_batch=60",
            "--config.model.ghost_batch_size=0",
        ],
        "config.train.global_microbatch: 60 is not divisible by the 8 devices",
        "such as 56 or 64",
    ),
    (["--config.dataset.name=mnist_typo"], "config.dataset.name: unknown dataset 'mnist_typo'", "digits"),
    (["--config.model.name=resnet5"], "config.model.name: unknown model 'resnet5'", "resnet50"),
    (["--config.optimizer.name=adamw"], "config.optimizer.name: unknown optimizer 'adamw'", "lamb"),
    (["--config.train.eval_every_epochs=abc"], "config.train.eval_every_epochs: cannot parse 'abc' as float", ""),
]


@pytest.mark.parametrize("overrides, prefix, fix", CASES)
def test_cli_config_errors(overrides, prefix, fix, capsys, tmp_path):
    rc, errors, compiles = run_cli(["train", "--workdir", str(tmp_path / "w"), *overrides], capsys)
    assert rc == cli.EXIT_CONFIG
    assert len(errors) == 1, errors
    assert errors[0].startswith("lbt: error: " + prefix), errors[0]
    assert fix in errors[0]
    assert compiles == 0  # failed before any XLA compilation
    assert not (tmp_path / "w" / "summary.json").exists()


def test_unknown_key_in_config_file(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text(
        textwrap.dedent("""
        from lbt.config import base_config
        def get_config():
            c = base_config()
            with c.train.unlocked():
                c.train.warmup = 5
            return c
    """)
    )
    rc, errors, _ = run_cli(["train", "--config", str(f), "--workdir", str(tmp_path / "w")], capsys)
    assert rc == cli.EXIT_CONFIG
    assert errors == [errors[0]] and errors[0].startswith("lbt: error: config.train.warmup: unknown key 'warmup'")


def test_missing_config_file(tmp_path, capsys):
    rc, errors, _ = run_cli(["train", "--config", str(tmp_path / "nope.py")], capsys)
    assert rc == cli.EXIT_CONFIG and "no config file at" in errors[0]


def test_override_types_and_sections():
    c = base_config()
    apply_override(c, "--config.schedule.lr.milestones=(5, 7.5)")
    assert c.schedule.lr.milestones == (5, 7.5)
    apply_override(c, "--config.train.progress=false")
    assert c.train.progress is False
    apply_override(c, "--config.schedule.epochs=3")
    assert c.schedule.epochs == 3.0 and isinstance(c.schedule.epochs, float)
    with pytest.raises(ConfigError, match="config.schedule.lr: is a section"):
        apply_override(c, "--config.schedule.lr=1")
    with pytest.raises(ConfigError, match="config.train.progress: expected true or false"):
        apply_override(c, "--config.train.progress=maybe")
    assert load_config(None).name == "digits"


def test_subprocess_exit_code_and_single_line(tmp_path):
    """The real console entry point: non-zero exit and exactly one error line on stderr."""
    p = subprocess.run(
        [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(tmp_path), "--config.schedule.base_lr=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == cli.EXIT_CONFIG
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line] == [lines[-1]]
    assert lines[-1].startswith("lbt: error: config.schedule.base_lr:")


def test_url_workdir_is_rejected_with_the_fix(capsys):
    from lbt.cli import main

    assert main(["train", "--workdir", "gs://bucket/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--workdir 'gs://bucket/run'" in err and "Cloud Storage FUSE" in err
