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
from collections.abc import Sequence

from lbt import runtime
from lbt.errors import CheckpointError, ConfigError, TrainingError

EXIT_CONFIG = 2
EXIT_TRAINING = 3
EXIT_PREEMPTED = 143  # SIGTERM honoured: checkpoint saved; rerun the same command to resume

SUBCOMMANDS = {
    "train": "train a model (default: the embedded digits config)",
    "plan": "print the phases, steps and noise scale of a config's Plan (lbt.tools.plan_report)",
    "reproduce": "run the decay-LR vs increase-batch reproduction suite (lbt.tools.reproduce)",
}


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbt train", allow_abbrev=False, description="Train with a growing batch.")
    p.add_argument("--config", default=None, help="config file configs/<name>.py (default: embedded digits)")
    p.add_argument("--workdir", default="runs/default", help="output directory (metrics, TensorBoard, checkpoints)")
    p.add_argument(
        "--num_cpu_devices", type=int, default=None, help="simulated CPU devices (default 8 or $LBT_NUM_CPU_DEVICES)"
    )
    p.add_argument("--coordinator_address", default=None, help="multi-process: host:port of process 0")
    p.add_argument("--num_processes", type=int, default=None, help="multi-process: number of processes")
    p.add_argument("--process_id", type=int, default=None, help="multi-process: this process's index")
    p.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=int(os.environ.get("LBT_HEARTBEAT_TIMEOUT_S", "60")),
        help="multi-process: a peer silent this long is declared dead and every process exits with an error",
    )
    p.add_argument(
        "--initialization_timeout_s",
        type=int,
        default=int(os.environ.get("LBT_INITIALIZATION_TIMEOUT_S", "300")),
        help="multi-process: how long to wait for all processes to connect",
    )
    p.add_argument(
        "--allow_config_change", action="store_true", help="resume even if the config differs from the checkpoint's"
    )
    p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    return p


def cmd_train(argv: Sequence[str]) -> int:
    rest, overrides = _split_overrides(argv)
    args = _train_parser().parse_args(rest)
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
    runtime.setup(args.num_cpu_devices)
    from lbt.parallel import distributed

    spec = distributed.detect_cluster(
        os.environ,
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    distributed.initialize(
        spec, initialization_timeout_s=args.initialization_timeout_s, heartbeat_timeout_s=args.heartbeat_timeout_s
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
        print(json.dumps(summary))
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
        return 0 if argv else EXIT_CONFIG
    cmd, rest = argv[0], argv[1:]
    if cmd not in SUBCOMMANDS:
        print(f"lbt: error: unknown command {cmd!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _dispatch(cmd, rest)
    except ConfigError as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (TrainingError, CheckpointError) as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return EXIT_TRAINING


if __name__ == "__main__":
    sys.exit(main())
