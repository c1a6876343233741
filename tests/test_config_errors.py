"""Invalid configs fail fast: one line naming the field and the fix, non-zero exit, no compile."""

import os
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
    (["--config.train.noise_scale_ema=1.0"], "config.train.noise_scale_ema: must be in [0, 1), got 1.0", "0.99"),
    (
        ["--config.train.noise_scale_every=-1"],
        "config.train.noise_scale_every: must be an integer in [0, 1000000]",
        "e.g. 1",
    ),
    (["--config.schedule.batch.regime_factor=-1"], "config.schedule.batch.regime_factor: must be a finite", ">= 0"),
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


def test_unsupported_url_workdir_is_rejected_with_the_fix(capsys):
    """gs://, s3:// and az:// workdirs go through etils.epath (tests/test_object_storage.py);
    any other URL is one line naming the schemes and the FUSE alternative."""
    from lbt.cli import main

    assert main(["train", "--workdir", "ftp://host/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--workdir 'ftp://host/run': ftp:// is not supported" in err
    assert "Cloud Storage FUSE" in err and "gs://, s3://, az://" in err


# ---------------------------------------------------------------------------------------------
# Bad config files: one line naming the file, the line and the error's first line; no traceback.

# (name, {file name: source}, the error line after "lbt: error: " with {f}/{sib} for the paths, fix)
CONFIG_FILE_CASES = [
    ("syntax_error", {"x.py": "from lbt.config import base_config\n\nx = = 1\n"}, "config.file: {f} line 3: ", ""),
    (
        "raises_at_import",
        {"x.py": "import lbt_no_such_module\n"},
        "config.file: {f} line 1: ModuleNotFoundError: No module named 'lbt_no_such_module'",
        "",
    ),
    (
        "get_config_raises",
        {"x.py": "def get_config():\n    x = 1\n    raise ValueError('boom\\nsecond line')\n"},
        "config.file: {f} line 3: get_config() raised ValueError: boom; ",
        "",
    ),
    (
        "get_config_returns_a_dict",
        {"x.py": "def get_config():\n    return {'name': 'x'}\n"},
        "config.file: {f}: get_config() returned dict, not an ml_collections.ConfigDict; ",
        "base_config()",
    ),
    (
        "get_config_returns_none",
        {"x.py": "def get_config():\n    pass\n"},
        "config.file: {f}: get_config() returned NoneType, not an ml_collections.ConfigDict; ",
        "base_config()",
    ),
    ("no_get_config", {"x.py": "X = 1\n"}, "config.file: {f} defines no get_config(); ", "returning a ConfigDict"),
    (
        "sibling_with_syntax_error",
        {
            "x.py": "from lbt.config import sibling_config\n\ndef get_config():\n    return sibling_config(__file__, 'sib')\n",
            "sib.py": "def get_config(:\n    pass\n",
        },
        "config.file: {sib} line 1: ",
        "",
    ),
]


@pytest.mark.parametrize("name, files, expected, fix", CONFIG_FILE_CASES, ids=[c[0] for c in CONFIG_FILE_CASES])
def test_bad_config_file_is_one_line(name, files, expected, fix, tmp_path, capsys):
    for fname, source in files.items():
        (tmp_path / fname).write_text(source)
    f, sib = tmp_path / "x.py", (tmp_path / "sib.py").resolve()
    rc, errors, compiles = run_cli(["train", "--config", str(f), "--workdir", str(tmp_path / "w")], capsys)
    assert rc == cli.EXIT_CONFIG
    assert len(errors) == 1, errors
    assert errors[0].startswith("lbt: error: " + expected.format(f=f, sib=sib)), errors[0]
    assert errors[0].endswith(fix or "fix the file"), errors[0]
    assert "second line" not in errors[0]
    assert compiles == 0 and not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------
# Bad flags and environment: one line naming the flag (or variable) and the fix, before JAX starts.

# (extra argv, environment, the error line after "lbt: error: ", fix)
FLAG_CASES = [
    (["--num_cpu_devices", "0"], {}, "--num_cpu_devices: must be >= 1, got 0; ", "when the backend is CPU"),
    (["--num_cpu_devices", "-1"], {}, "--num_cpu_devices: must be >= 1, got -1; ", "when the backend is CPU"),
    (["--num_cpu_devices", "x"], {}, "--num_cpu_devices: invalid int value: 'x'; ", "lbt train --help"),
    ([], {"LBT_NUM_CPU_DEVICES": "abc"}, "LBT_NUM_CPU_DEVICES: must be an integer >= 1, got 'abc'; ", "unset it"),
    ([], {"LBT_NUM_CPU_DEVICES": "0"}, "LBT_NUM_CPU_DEVICES: must be an integer >= 1, got '0'; ", "unset it"),
    ([], {"LBT_HEARTBEAT_TIMEOUT_S": "soon"}, "LBT_HEARTBEAT_TIMEOUT_S: must be an integer >= 1", "unset it"),
    (["--heartbeat_timeout_s", "0"], {}, "--heartbeat_timeout_s: must be >= 1, got 0; ", "default 60"),
    (["--initialization_timeout_s", "-5"], {}, "--initialization_timeout_s: must be >= 1, got -5; ", "default 300"),
    (["--nope"], {}, "--nope: not a flag of lbt train; ", "lbt train --help"),
    (["extra"], {}, "extra: not a flag of lbt train; ", "lbt train --help"),
    (["--num_processes", "two"], {}, "--num_processes: invalid int value: 'two'; ", "lbt train --help"),
    (["--config"], {}, "--config: expected one argument; ", "lbt train --help"),
]


@pytest.mark.parametrize("argv, env, expected, fix", FLAG_CASES)
def test_bad_flag_or_env_is_one_line(argv, env, expected, fix, tmp_path, capsys, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc, errors, compiles = run_cli(["train", "--workdir", str(tmp_path / "w"), *argv], capsys)
    assert rc == cli.EXIT_CONFIG
    assert len(errors) == 1, errors
    assert errors[0].startswith("lbt: error: " + expected), errors[0]
    assert fix in errors[0]
    assert compiles == 0 and not (tmp_path / "w").exists()


def test_config_file_error_names_the_path_as_given(tmp_path, capsys, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.py").write_text("\n\nx = = 1\n")
    monkeypatch.chdir(tmp_path)
    rc, errors, _ = run_cli(["train", "--config", "configs/x.py"], capsys)
    assert rc == cli.EXIT_CONFIG
    assert errors == ["lbt: error: config.file: configs/x.py line 3: invalid syntax; fix the file"]
    assert not (tmp_path / "runs").exists()


def test_no_command_is_one_error_line(capsys):
    assert cli.main([]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lbt: error: no command given; ") and "lbt train" in err[0]


def test_help_says_num_cpu_devices_is_for_the_cpu_backend(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--num_cpu_devices" in out and "only applies when the backend is CPU" in out


# ---------------------------------------------------------------------------------------------
# Bad workdirs: checked (created, probe-written, probe removed) right after the config, before JAX.


def _workdir_file(tmp_path):
    (tmp_path / "file.txt").write_text("keep me")
    return tmp_path / "file.txt", "{w}: is a file, not a directory; "


def _workdir_below_file(tmp_path):
    (tmp_path / "file.txt").write_text("keep me")
    return tmp_path / "file.txt" / "run", "{w}: {p} is a file, so the directory cannot be created; "


WORKDIR_CASES = [_workdir_file, _workdir_below_file]


@pytest.mark.parametrize("make", WORKDIR_CASES, ids=[m.__name__ for m in WORKDIR_CASES])
def test_bad_workdir_is_one_line(make, tmp_path, capsys):
    w, expected = make(tmp_path)
    rc, errors, compiles = run_cli(["train", "--workdir", str(w)], capsys)
    assert rc == cli.EXIT_CONFIG
    assert len(errors) == 1, errors
    assert errors[0].startswith("lbt: error: --workdir " + expected.format(w=repr(str(w)), p=tmp_path / "file.txt"))
    assert "pass --workdir" in errors[0]
    assert compiles == 0 and (tmp_path / "file.txt").read_text() == "keep me"  # nothing lost


def test_read_only_workdir_is_one_line(tmp_path, capsys, monkeypatch):
    w = tmp_path / "ro"
    w.mkdir()
    (w / "old.txt").write_text("keep me")
    w.chmod(0o555)
    if os.access(w, os.W_OK):  # root: permission bits don't stop writes; make the write probe fail instead

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(w))

        monkeypatch.setattr(cli.tempfile, "mkstemp", denied)
    try:
        rc, errors, compiles = run_cli(["train", "--workdir", str(w)], capsys)
    finally:
        w.chmod(0o755)
    assert rc == cli.EXIT_CONFIG
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"lbt: error: --workdir {str(w)!r}: cannot write there (Permission denied); ")
    assert "pass --workdir" in errors[0]
    assert compiles == 0 and sorted(p.name for p in w.iterdir()) == ["old.txt"]


def test_workdir_check_creates_it_and_leaves_no_probe(tmp_path):
    w = tmp_path / "a" / "b"
    cli.check_workdir(str(w))
    assert w.is_dir() and list(w.iterdir()) == []
    (w / "old.txt").write_text("keep me")
    cli.check_workdir(str(w))
    assert [p.name for p in w.iterdir()] == ["old.txt"]


# ---------------------------------------------------------------------------------------------
# The real entry point: exactly one line, no traceback, no argparse usage dump.

SUBPROCESS_CASES = [
    (["--config", "{syntax}"], {}, "config.file: "),
    (["--num_cpu_devices", "0"], {}, "--num_cpu_devices: "),
    ([], {"LBT_NUM_CPU_DEVICES": "abc"}, "LBT_NUM_CPU_DEVICES: "),
    (["--workdir", "{file}/run"], {}, "--workdir "),
    (["--nope"], {}, "--nope: "),
]


@pytest.mark.parametrize("argv, env, expected", SUBPROCESS_CASES)
def test_subprocess_bad_input_is_one_line(argv, env, expected, tmp_path):
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    (tmp_path / "file.txt").write_text("")
    argv = [a.format(syntax=tmp_path / "syntax.py", file=tmp_path / "file.txt") for a in argv]
    p = subprocess.run(
        [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(tmp_path / "w"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert p.returncode == cli.EXIT_CONFIG
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("lbt: error: " + expected), lines[0]
