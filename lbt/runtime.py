"""Process-level JAX setup, in one place: XLA:CPU flags and the simulated CPU device count.

Everything here must run before a JAX backend starts (the first computation or device query),
so this module imports no JAX at import time. ``lbt train``, ``lbt reproduce``, the benchmarks
and the test suite all call :func:`setup` (or :func:`cpu_xla_flags` alone) instead of editing
``XLA_FLAGS`` themselves.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# Accelerators on this host, and whether the installed jax can use them

#: PCI vendor of Google TPU chips and the device ids of each generation (as jax._src.hardware_utils).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = {"0x0027": "v3", "0x005e": "v4", "0x0062": "v5p", "0x0063": "v5e", "0x006f": "v6e", "0x0076": "7x"}
_NVIDIA_PCI_VENDOR = "0x10de"
_PCI_DISPLAY_CLASSES = ("0x0300", "0x0302")  # VGA and 3D controllers (not NVSwitch bridges)


@dataclasses.dataclass(frozen=True)
class Host:
    """Accelerators attached to this machine, seen without starting JAX (:func:`probe_host`)."""

    nvidia_gpus: int = 0
    tpu_chips: int = 0
    tpu_version: str | None = None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def probe_host(root: str | Path = "/") -> Host:
    """Counts NVIDIA GPUs and TPU chips on the PCI bus (``/sys/bus/pci/devices``) and NVIDIA device
    nodes (``/dev/nvidia<N>``, what a container sees). Reads only files; ``root`` is for tests."""
    root = Path(root)
    gpus = tpus = 0
    version = None
    for dev in sorted((root / "sys/bus/pci/devices").glob("*")):
        vendor = _read(dev / "vendor")
        if vendor == _GOOGLE_PCI_VENDOR and _read(dev / "device") in _TPU_PCI_DEVICES:
            tpus += 1
            version = _TPU_PCI_DEVICES[_read(dev / "device")]
        elif vendor == _NVIDIA_PCI_VENDOR and _read(dev / "class").startswith(_PCI_DISPLAY_CLASSES):
            gpus += 1
    nodes = [p for p in (root / "dev").glob("nvidia*") if p.name[len("nvidia") :].isdigit()]
    return Host(max(gpus, len(nodes)), tpus, version)


def jax_plugins() -> dict[str, bool]:
    """Whether the installed jax has CUDA (``jax[cuda12]``/``jax[cuda13]``) and TPU (``libtpu``)
    support; looks the packages up without importing them."""
    from importlib.util import find_spec

    return {
        "cuda": any(find_spec(name) is not None for name in ("jax_cuda12_plugin", "jax_cuda13_plugin")),
        "tpu": find_spec("libtpu") is not None,
    }


def cpu_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """``JAX_PLATFORMS`` asks for the CPU backend only (``cpu``): the user chose CPU on purpose."""
    return [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()] == ["cpu"]


def check_accelerators(host: Host, plugins: Mapping[str, bool], environ: Mapping[str, str] = os.environ) -> str | None:
    """Before JAX starts: an accelerator the installed jax cannot use.

    TPU chips without ``libtpu`` raise :class:`SetupError`: JAX's TPU cluster detection needs
    libtpu, so lbt could not even tell a single TPU VM from one host of a multi-host slice (whose
    hosts would each train alone). NVIDIA GPUs without a CUDA plugin return a warning line (the
    run goes on, on simulated CPU devices). Nothing with ``JAX_PLATFORMS=cpu``, a deliberate choice.
    """
    if cpu_requested(environ):
        return None
    if host.tpu_chips and not plugins.get("tpu"):
        raise SetupError(
            f"TPU: this host has {host.tpu_chips} TPU {host.tpu_version or ''} chips but the installed jax has no TPU "
            "support (no libtpu), so lbt would train on simulated CPU devices; pip install 'lbt[tpu]' "
            "(or set JAX_PLATFORMS=cpu to train on the CPU anyway)"
        )
    if host.nvidia_gpus and not plugins.get("cuda"):
        return (
            f"WARNING: this machine has {host.nvidia_gpus} NVIDIA GPU(s) but the installed jax has no CUDA support, "
            "so lbt trains on simulated CPU devices; pip install 'lbt[cuda12]' to use them "
            "(set JAX_PLATFORMS=cpu to train on the CPU without this warning)"
        )
    return None


def check_backend(
    backend: str, host: Host, plugins: Mapping[str, bool], environ: Mapping[str, str] = os.environ
) -> str | None:
    """After JAX started: a warning when it fell back to CPU although the accelerator and the
    plugin are there (JAX logs why just before, e.g. a driver older than the CUDA of the wheels)."""
    if backend != "cpu" or cpu_requested(environ):
        return None
    if (host.nvidia_gpus and plugins.get("cuda")) or (host.tpu_chips and plugins.get("tpu")):
        kind = "TPU chips" if host.tpu_chips else "NVIDIA GPUs"
        return (
            f"WARNING: this machine has {kind} and jax's plugin for them, but JAX started on the CPU backend "
            "(see JAX's warning above), so lbt trains on simulated CPU devices"
        )
    return None
