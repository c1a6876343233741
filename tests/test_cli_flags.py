"""Small CLI contracts: --version, lbt train --help, the space form of overrides, a closed stdout
pipe, and the one-line `lbt: error:` of lbt plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import lbt
from lbt.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lbt {lbt.__version__}\n"
    assert lbt.__version__ == version("lbt")  # the installed distribution's version is the package's


def test_train_help_shows_overrides_defaults_and_the_cpu_device_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--config.a.b=value" in out and "--config.a.b value" in out
    assert "(default: runs/default)" in out
    assert "only applies when the backend is CPU" in out and "ignored on GPU/TPU" in out


def test_space_form_of_an_override(capsys):
    assert main(["train", "--config.schedule.epochs", "3", "--config.model.width", "16", "--print_config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["schedule"]["epochs"] == 3.0 and config["model"]["width"] == 16
    assert main(["train", "--config.schedule.epochs", "--print_config"]) == 2  # no value: a flag follows
    assert "override needs a value" in capsys.readouterr().err


def test_print_config_into_a_closed_pipe_has_no_traceback():
    r, w = os.pipe()
    os.close(r)  # the reader is gone before lbt writes (as `| head` after its lines)
    try:
        p = subprocess.run(
            [sys.executable, "-m", "lbt.cli", "train", "--print_config"],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr


def test_plan_errors_use_the_lbt_error_prefix(capsys):
    assert main(["plan", "--bogus"]) == 2
    assert (
        capsys.readouterr().err
        == "lbt: error: --bogus: not a flag of lbt plan; see lbt plan --help (overrides: --config.schedule.epochs=90)\n"
    )
    assert main(["plan", "--no-plot", "--config.schedule.global_batch=100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lbt: error: config.schedule.global_batch: ") and err.count("\n") == 1
    assert main(["plan", "--json", "--no-plot", "--config.schedule.epochs", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["total_steps"] > 0


def test_train_on_a_tpu_host_without_libtpu_refuses_before_jax_starts(tmp_path, monkeypatch, capsys):
    from lbt import runtime

    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(runtime, "probe_host", lambda: runtime.Host(0, 4, "v5e"))
    monkeypatch.setattr(runtime, "jax_plugins", lambda: {"cuda": False, "tpu": False})
    monkeypatch.setattr(runtime, "setup", lambda *a, **k: pytest.fail("JAX must not start"))
    assert main(["train", "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lbt: error: TPU: this host has 4 TPU v5e chips") and "lbt[tpu]" in err
