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

from lbt import runtime
from lbt.errors import CheckpointError, ConfigError, TrainingError

EXIT_CONFIG = 2
EXIT_TRAINING = 3
EXIT_PREEMPTED = 143  # SIGTERM honoured: checkpoint saved; rerun the same command to resume

SUBCOMMANDS = {
    "train": "train a model (default: the embedded digits config)",
    "plan": "print the phases, steps and noise scale of a config's Plan (lbt.tools.plan_report)",
    "reproduce": "run the decay-LR vs increase-batch reproduction suite (lbt.tools.reproduce)",
    "lr-range-test": "LR range test (Smith 2017): loss vs a rising LR, CLR/1cycle bounds (lbt.tools.lr_range)",
    "sweep": "batch size x LR grid at a constant epoch or step budget (lbt.tools.sweep)",
}


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``lbt: error:`` line (a :class:`runtime.SetupError`),
    not argparse's usage dump."""

    def error(self, message: str):  # type: ignore[override]
        what, _, problem = message.removeprefix("argument ").partition(": ")
        if not problem:
            what, problem = self.prog, message
        raise runtime.SetupError(f"{what}: {problem}; see {self.prog} --help")


def _train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lbt train", allow_abbrev=False, description="Train with a growing batch.")
    p.add_argument("--config", default=None, help="config file configs/<name>.py (default: embedded digits)")
    p.add_argument("--workdir", default="runs/default", help="output directory (metrics, TensorBoard, checkpoints)")
    p.add_argument(
        "--num_cpu_devices",
        type=int,
        default=None,
        help=f"simulated CPU devices, >= 1 (default {runtime.DEFAULT_CPU_DEVICES} or $LBT_NUM_CPU_DEVICES); "
        "only applies when the backend is CPU, ignored on GPU/TPU",
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

    if "://" in args.workdir:
        print(
            f"lbt: error: --workdir {args.workdir!r}: URLs are not supported; the workdir must be a path every "
            "process can see. Mount a bucket with Cloud Storage FUSE (e.g. --workdir /gcs/<bucket>/run) or use a "
            "shared filesystem (docs/launching.md).",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    config = config_lib.load_config(args.config, overrides)  # fails fast, before JAX starts
    if args.print_config:
        print(config_lib.to_json(config))
        return 0
    check_workdir(args.workdir)  # before JAX starts
    runtime.setup(num_cpu_devices, compile_cache_dir=args.compile_cache_dir)
    from lbt.parallel import distributed

    spec = distributed.detect_cluster(
        os.environ,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    distributed.initialize(
        spec, initialization_timeout_s=initialization_timeout_s, heartbeat_timeout_s=heartbeat_timeout_s
    )
    logging.getLogger("lbt").info("%s", distributed.describe())
    from lbt.train.faults import Faults
    from lbt.train.loop import Preempted, train

    faults = Faults.from_env(os.environ)  # test-only fault injection, read once here
    try:
        summary = train(config, args.workdir, allow_config_change=args.allow_config_change, faults=faults)
    except Preempted as e:
        print(f"lbt: {e}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    if distributed.is_primary():
        print(json.dumps(summary, allow_nan=False))  # NaN/Inf are null in the summary
    return 0


def _dispatch(cmd: str, argv: Sequence[str]) -> int:
    if cmd == "train":
        return cmd_train(argv)
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
    raise AssertionError(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="lbt: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lbt <command> [options]\n\ncommands:")
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
        return _dispatch(cmd, rest)
    except (ConfigError, runtime.SetupError) as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (TrainingError, CheckpointError) as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return EXIT_TRAINING


if __name__ == "__main__":
    sys.exit(main())
