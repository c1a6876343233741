"""The ``lbt`` command: ``lbt train``, ``lbt plan`` and the tools.

``lbt train [--config configs/x.py] [--workdir DIR] [--config.a.b=value ...]``
With no ``--config`` it trains the embedded default (digits, see ``lbt.config.base_config``).
On a CPU-only machine JAX gets ``--num_cpu_devices`` (default 8) simulated devices; the flag
(or ``LBT_NUM_CPU_DEVICES``) must be applied before JAX starts, which this module does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lbt import runtime, storage
from lbt.errors import CheckpointError, ConfigError, TrainingError

EXIT_CONFIG = 2
EXIT_TRAINING = 3
EXIT_PREEMPTED = 143  # SIGTERM honoured: checkpoint saved; rerun the same command to resume
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (128 + SIGPIPE, as a shell reports it)

SUBCOMMANDS = {
    "train": "train a model (default: the embedded digits config)",
    "eval": "evaluate a checkpoint of a run on a split; writes WORKDIR/eval_step<S>_<split>.json",
    "plan": "print the phases, steps and noise scale of a config's Plan (lbt.tools.plan_report)",
    "reproduce": "run the decay-LR vs increase-batch reproduction suite (lbt.tools.reproduce)",
    "lr-range-test": "LR range test (Smith 2017): loss vs a rising LR, CLR/1cycle bounds (lbt.tools.lr_range)",
    "sweep": "batch size x LR grid at a constant epoch or step budget (lbt.tools.sweep)",
    "noise-scale": "measure the gradient noise scale B_simple (McCandlish et al. 2018) (lbt.tools.noise_scale)",
}


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--config.a.b=value`` and ``--config.a.b value`` overrides apart from the flags."""
    from lbt.config import split_overrides

    return split_overrides(argv)


DEFAULT_WORKDIR = "runs/default"
_TRAIN_EPILOG = f"""config fields:
  --config.a.b=value    set any field of the config (also as two arguments: --config.a.b value),
                        e.g. --config.schedule.epochs=10 --config.model.ghost_batch_size 8;
                        --print_config shows every field. A bad field or value fails before JAX starts.

defaults: --workdir {DEFAULT_WORKDIR}; on a CPU-only machine {runtime.DEFAULT_CPU_DEVICES} simulated CPU devices.
Install jax for an accelerator with pip install 'lbt[cuda12]' or 'lbt[tpu]' (README, "Install")."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``lbt: error:`` line (a :class:`runtime.SetupError`),
    not argparse's usage dump."""

    def error(self, message: str):  # type: ignore[override]
        what, _, problem = message.removeprefix("argument ").partition(": ")
        if not problem:
            what, problem = self.prog, message
        raise runtime.SetupError(f"{what}: {problem}; see {self.prog} --help")


def _train_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lbt train",
        allow_abbrev=False,
        description="Train with a growing batch.",
        usage="lbt train [--config FILE] [--workdir DIR] [--config.a.b=value ...] [flags]",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="config file configs/<name>.py (default: embedded digits)")
    p.add_argument(
        "--workdir",
        default=DEFAULT_WORKDIR,
        help=f"output directory: metrics, TensorBoard, checkpoints (default: {DEFAULT_WORKDIR})",
    )
    p.add_argument(
        "--num_cpu_devices",
        type=int,
        default=None,
        help=f"simulated CPU devices, >= 1 (default {runtime.DEFAULT_CPU_DEVICES} or $LBT_NUM_CPU_DEVICES); "
        "only applies when the backend is CPU (a CPU-only jax, or JAX_PLATFORMS=cpu), ignored on GPU/TPU",
    )
    p.add_argument(
        "--compile_cache_dir",
        default=None,
        help="JAX's persistent compilation cache: a rerun loads the programs instead of compiling them "
        "(default $LBT_COMPILE_CACHE_DIR or ~/.cache/lbt/jax; '' = off)",
    )
    p.add_argument("--coordinator_address", default=None, help="multi-process: host:port of process 0")
    p.add_argument("--num_processes", type=int, default=None, help="multi-process: number of processes")
    p.add_argument("--process_id", type=int, default=None, help="multi-process: this process's index")
    p.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=None,
        help="multi-process: a peer silent this long is declared dead and every process exits with an error "
        "(default 60 or $LBT_HEARTBEAT_TIMEOUT_S)",
    )
    p.add_argument(
        "--initialization_timeout_s",
        type=int,
        default=None,
        help="multi-process: how long to wait for all processes to connect (default 300 or "
        "$LBT_INITIALIZATION_TIMEOUT_S)",
    )
    p.add_argument(
        "--allow_config_change", action="store_true", help="resume even if the config differs from the checkpoint's"
    )
    p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    return p


def check_workdir(workdir: str) -> None:
    """Create ``workdir`` if needed and check that a file can be written there (a probe file, then removed).

    Raises :class:`runtime.SetupError` naming ``--workdir`` and the fix for a path that is a file, lies
    below a file, or cannot be written (read-only, no permission, ...). Runs before JAX starts; it
    never removes or changes anything that was there.
    """
    if storage.is_remote(workdir):
        _check_remote_workdir(workdir)
        return
    fix = "pass --workdir a directory you can write to (it is created if missing)"
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise runtime.SetupError(f"--workdir {workdir!r}: is a file, not a directory; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((a for a in path.parents if a.exists() and not a.is_dir()), None)
        if blocker is None:
            raise runtime.SetupError(f"--workdir {workdir!r}: cannot create the directory; {fix}") from None
        raise runtime.SetupError(
            f"--workdir {workdir!r}: {blocker} is a file, so the directory cannot be created; {fix}"
        ) from None
    except OSError as e:
        raise runtime.SetupError(f"--workdir {workdir!r}: cannot create it ({e.strerror or e}); {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".lbt-write-probe-")
    except OSError as e:
        raise runtime.SetupError(f"--workdir {workdir!r}: cannot write there ({e.strerror or e}); {fix}") from None
    os.close(fd)
    os.unlink(probe)


def _check_remote_workdir(workdir: str) -> None:
    """:func:`check_workdir` for a URL workdir (``gs://...``): its scheme is supported, and an
    object can be written and deleted there (through ``etils.epath``)."""
    storage.check_scheme(workdir)
    path = storage.as_path(workdir)
    import socket

    probe = path / f".lbt-write-probe-{socket.gethostname()}-{os.getpid()}"  # one per process of a job
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - tf.io.gfile / fsspec raise their own types
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise runtime.SetupError(
            f"--workdir {workdir!r}: cannot write there ({cause}); check the bucket name and the credentials "
            "(e.g. gcloud auth application-default login), or use a local path"
        ) from None


def cmd_train(argv: Sequence[str]) -> int:
    rest, overrides = _split_overrides(argv)
    parser = _train_parser()
    args, unknown = parser.parse_known_args(rest)
    if unknown:
        raise runtime.SetupError(
            f"{' '.join(unknown)}: not a flag of lbt train; see lbt train --help (config fields: --config.a.b=value)"
        )
    # Flags and environment first (cheap, one line each), all before JAX starts.
    num_cpu_devices = runtime.cpu_device_count(args.num_cpu_devices)
    heartbeat_timeout_s = runtime.int_setting(
        "--heartbeat_timeout_s", args.heartbeat_timeout_s, "LBT_HEARTBEAT_TIMEOUT_S", 60
    )
    initialization_timeout_s = runtime.int_setting(
        "--initialization_timeout_s", args.initialization_timeout_s, "LBT_INITIALIZATION_TIMEOUT_S", 300
    )
    from lbt import config as config_lib

    storage.check_scheme(args.workdir)  # gs://, s3://, az:// or a local path (docs/checkpointing.md)
    config = config_lib.load_config(args.config, overrides)  # fails fast, before JAX starts
    if args.print_config:
        print(config_lib.to_json(config))
        return 0
    check_workdir(args.workdir)  # before JAX starts
    host, plugins = runtime.probe_host(), runtime.jax_plugins()
    warnings = [w for w in [runtime.check_accelerators(host, plugins)] if w]  # a TPU without libtpu: error
    runtime.setup(num_cpu_devices, compile_cache_dir=args.compile_cache_dir)
    from lbt.parallel import distributed

    spec = distributed.detect_cluster(
        os.environ,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        tpu_chips=0 if runtime.cpu_requested() else host.tpu_chips,
    )
    distributed.initialize(
        spec, initialization_timeout_s=initialization_timeout_s, heartbeat_timeout_s=heartbeat_timeout_s
    )
    log = logging.getLogger("lbt")
    log.info("%s", distributed.describe())
    warnings += _backend_warnings(args.num_cpu_devices, host, plugins)
    for w in warnings:
        log.warning("%s", w)
    from lbt.train.faults import Faults
    from lbt.train.loop import Preempted, train

    faults = Faults.from_env(os.environ)  # test-only fault injection, read once here
    try:
        summary = train(config, args.workdir, allow_config_change=args.allow_config_change, faults=faults)
    except Preempted as e:
        print(f"lbt: {e}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    for w in warnings:  # again at the end, where a finished run's output is read
        log.warning("%s", w)
    if distributed.is_primary():
        print(json.dumps(summary, allow_nan=False))  # NaN/Inf are null in the summary
    return 0


def _backend_warnings(num_cpu_devices: int | None, host: runtime.Host, plugins: dict[str, bool]) -> list[str]:
    """Once JAX started: it fell back to CPU although an accelerator is usable, or an explicit
    ``--num_cpu_devices`` that a GPU/TPU backend ignores."""
    import jax

    backend = jax.default_backend()
    out = [w for w in [runtime.check_backend(backend, host, plugins)] if w]
    if num_cpu_devices is not None and backend != "cpu":
        out.append(f"--num_cpu_devices {num_cpu_devices} is ignored: the backend is {backend}, not CPU")
    return out


def _eval_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lbt eval",
        allow_abbrev=False,
        description="Evaluate a checkpoint of a run on a split, with the run's config, on this machine's devices "
        "(any count); writes WORKDIR/eval_step<S>_<split>.json and prints it as one JSON line.",
    )
    p.add_argument("--workdir", required=True, help="the run's workdir (a path, or gs://...)")
    p.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest good one)")
    p.add_argument("--split", default="test", choices=("test", "train"), help="the split (default: test)")
    p.add_argument(
        "--num_cpu_devices",
        type=int,
        default=None,
        help=f"simulated CPU devices (default {runtime.DEFAULT_CPU_DEVICES} or $LBT_NUM_CPU_DEVICES); CPU only",
    )
    p.add_argument("--compile_cache_dir", default=None, help="JAX's persistent compilation cache ('' = off)")
    return p


def cmd_eval(argv: Sequence[str]) -> int:
    """``lbt eval``: the workdir and step are checked before JAX starts (one line, exit 2)."""
    args = _eval_parser().parse_args(list(argv))
    num_cpu_devices = runtime.cpu_device_count(args.num_cpu_devices)
    storage.check_scheme(args.workdir)
    from lbt.train.workdir import check_checkpoint

    check_checkpoint(args.workdir, args.step)
    runtime.setup(num_cpu_devices, compile_cache_dir=args.compile_cache_dir)
    from lbt.train.metrics import json_safe
    from lbt.train.trained import evaluate_checkpoint

    record = evaluate_checkpoint(args.workdir, args.step, args.split)
    print(json.dumps(json_safe(record), allow_nan=False))
    return 0


def _dispatch(cmd: str, argv: Sequence[str]) -> int:
    if cmd == "train":
        return cmd_train(argv)
    if cmd == "eval":
        return cmd_eval(argv)
    if cmd == "plan":
        from lbt.tools.plan_report import main as plan_main

        return plan_main(list(argv))
    if cmd == "reproduce":
        from lbt.tools.reproduce import main as reproduce_main

        return reproduce_main(list(argv))
    if cmd == "lr-range-test":
        from lbt.tools.lr_range import main as lr_range_main

        return lr_range_main(list(argv))
    if cmd == "sweep":
        from lbt.tools.sweep import main as sweep_main

        return sweep_main(list(argv))
    if cmd == "noise-scale":
        from lbt.tools.noise_scale import main as noise_scale_main

        return noise_scale_main(list(argv))
    raise AssertionError(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="lbt: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if argv and argv[0] in ("-V", "--version"):
        from lbt import __version__

        print(f"lbt {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lbt <command> [options]    (lbt <command> --help; lbt --version)\n\ncommands:")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:<16}{text}")
        if argv:
            return 0
        print(
            f"lbt: error: no command given; run lbt <command>, e.g. lbt train ({', '.join(SUBCOMMANDS)})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    cmd, rest = argv[0], argv[1:]
    if cmd not in SUBCOMMANDS:
        print(f"lbt: error: unknown command {cmd!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        rc = _dispatch(cmd, rest)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at interpreter exit
        return rc
    except BrokenPipeError:  # e.g. `lbt train --print_config | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return EXIT_BROKEN_PIPE
    except (ConfigError, runtime.SetupError) as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (TrainingError, CheckpointError) as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return EXIT_TRAINING


if __name__ == "__main__":
    sys.exit(main())
