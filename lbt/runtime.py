"""Process-level JAX setup, in one place: XLA:CPU flags and the simulated CPU device count.

Everything here must run before a JAX backend starts (the first computation or device query),
so this module imports no JAX at import time. ``lbt train``, ``lbt reproduce``, the benchmarks
and the test suite all call :func:`setup` (or :func:`cpu_xla_flags` alone) instead of editing
``XLA_FLAGS`` themselves.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: The default number of simulated CPU devices of ``lbt train`` (``$LBT_NUM_CPU_DEVICES`` overrides).
DEFAULT_CPU_DEVICES = 8


class SetupError(ValueError):
    """A bad process-level input (a flag, an environment variable, the workdir), found before JAX starts.

    ``str()`` is one line: ``<flag or variable>: <problem>; <fix>``; ``lbt`` prints it as
    ``lbt: error: ...`` and exits 2.
    """


def int_setting(
    flag: str,
    requested: int | None,
    env_var: str,
    default: int,
    *,
    minimum: int = 1,
    fix: str = "",
    environ: MutableMapping[str, str] = os.environ,
) -> int:
    """``requested`` (the value of ``flag``), else ``$env_var``, else ``default``; each must be >= ``minimum``.

    Raises :class:`SetupError` naming the flag or the variable, e.g. for ``--num_cpu_devices 0`` or
    ``LBT_NUM_CPU_DEVICES=abc``. ``fix`` is appended to the flag's message.
    """
    if requested is not None:
        if requested < minimum:
            raise SetupError(
                f"{flag}: must be >= {minimum}, got {requested}; pass {flag} {minimum} or more, or omit it for the "
                f"default {default}{fix}"
            )
        return int(requested)
    text = environ.get(env_var)
    if text is None:
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise SetupError(
            f"{env_var}: must be an integer >= {minimum}, got {text!r}; set e.g. {env_var}={max(minimum, default)} "
            f"or unset it (default {default}), or pass {flag}"
        )
    return value


def add_xla_flag(name: str, value: object, environ: MutableMapping[str, str] = os.environ) -> None:
    """Append ``--name=value`` to ``XLA_FLAGS`` unless the user's ``XLA_FLAGS`` already names it."""
    flags = environ.get("XLA_FLAGS", "")
    if name not in flags:
        environ["XLA_FLAGS"] = f"{flags} --{name}={value}".strip()


def cpu_xla_flags(
    collective_timeout_s: int | None = None,
    warn_stuck_s: int | None = None,
    environ: MutableMapping[str, str] = os.environ,
) -> None:
    """XLA:CPU settings for simulated devices; call before a JAX backend starts.

    Always: multi-threaded Eigen off. With several simulated devices the per-device executions
    already use every core, and a run of 8 devices on 2 busy cores was once seen to wedge (7
    devices waiting in an all-reduce for an 8th that never ran). Single-threaded Eigen avoids the
    shared intra-op pool; it measured no slower on the digits run.
    ``collective_timeout_s`` / ``warn_stuck_s``: let collectives wait longer than XLA's default
    (40 s) before aborting / warning, for long jobs on an oversubscribed machine, where a device
    thread can be descheduled for a long time (``lbt reproduce``, the benchmarks).
    A flag the user already set in ``XLA_FLAGS`` wins.
    """
    add_xla_flag("xla_cpu_multi_thread_eigen", "false", environ)
    if collective_timeout_s is not None:
        add_xla_flag("xla_cpu_collective_call_terminate_timeout_seconds", collective_timeout_s, environ)
    if warn_stuck_s is not None:
        add_xla_flag("xla_cpu_collective_call_warn_stuck_timeout_seconds", warn_stuck_s, environ)


def cpu_device_count(requested: int | None, default: int = DEFAULT_CPU_DEVICES) -> int:
    """``requested``, else ``$LBT_NUM_CPU_DEVICES``, else ``default``; :class:`SetupError` unless >= 1."""
    return int_setting(
        "--num_cpu_devices",
        requested,
        "LBT_NUM_CPU_DEVICES",
        default,
        fix=" (it only applies when the backend is CPU)",
    )


def default_compile_cache_dir() -> str:
    """``$LBT_COMPILE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lbt/jax`` (``~/.cache/lbt/jax``); ``""`` is off."""
    if "LBT_COMPILE_CACHE_DIR" in os.environ:
        return os.environ["LBT_COMPILE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lbt", "jax")


def setup(
    num_cpu_devices: int | None = None,
    *,
    default_cpu_devices: int = DEFAULT_CPU_DEVICES,
    collective_timeout_s: int | None = None,
    warn_stuck_s: int | None = None,
    compile_cache_dir: str | None = None,
) -> int:
    """Set the XLA:CPU flags and give the CPU backend its simulated devices; return the count.

    The device count applies only when JAX runs on the CPU backend; on GPU/TPU it is ignored.
    A count below 1 (flag or ``$LBT_NUM_CPU_DEVICES``) raises :class:`SetupError` before JAX is imported.
    ``compile_cache_dir``: JAX's persistent compilation cache (``None`` = :func:`default_compile_cache_dir`,
    ``""`` = off). A second run of the same programs loads them instead of compiling (programs that
    compile in under ``jax_persistent_cache_min_compile_time_secs``, 1 s by default, are not cached).
    """
    n = cpu_device_count(num_cpu_devices, default_cpu_devices)
    cpu_xla_flags(collective_timeout_s, warn_stuck_s)
    import jax

    jax.config.update("jax_num_cpu_devices", n)
    cache = default_compile_cache_dir() if compile_cache_dir is None else compile_cache_dir
    if cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache))
    return n
