"""Accelerators on the host (a fake /sys and /dev) against the installed jax's plugins: a TPU
without libtpu refuses, GPUs without CUDA warn, JAX_PLATFORMS=cpu is a deliberate choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbt import runtime
from lbt.runtime import Host, SetupError


def _pci(root: Path, slot: str, vendor: str, device: str, cls: str) -> None:
    d = root / "sys/bus/pci/devices" / slot
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
    (d / "class").write_text(cls + "\n")


def test_probe_host_counts_gpus_and_tpu_chips(tmp_path):
    assert runtime.probe_host(tmp_path) == Host(0, 0, None)
    for i in range(2):
        _pci(tmp_path, f"0000:0{i}:00.0", "0x10de", "0x2335", "0x030200")  # H200 (3D controller)
    _pci(tmp_path, "0000:09:00.0", "0x10de", "0x22a3", "0x068000")  # NVSwitch: a bridge, not a GPU
    _pci(tmp_path, "0000:0a:00.0", "0x8086", "0x1234", "0x030000")  # another vendor's display
    assert runtime.probe_host(tmp_path) == Host(2, 0, None)
    for i in range(4):
        _pci(tmp_path, f"0000:1{i}:00.0", "0x1ae0", "0x0063", "0x120000")  # v5e chips
    assert runtime.probe_host(tmp_path) == Host(2, 4, "v5e")


def test_probe_host_sees_a_containers_device_nodes(tmp_path):
    (tmp_path / "dev").mkdir()
    for name in ("nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm"):
        (tmp_path / "dev" / name).write_text("")
    assert runtime.probe_host(tmp_path).nvidia_gpus == 3


NO_PLUGINS = {"cuda": False, "tpu": False}


def test_tpu_without_libtpu_refuses():
    with pytest.raises(SetupError) as e:
        runtime.check_accelerators(Host(0, 4, "v4"), NO_PLUGINS, {})
    msg = str(e.value)
    assert msg.startswith("TPU: this host has 4 TPU v4 chips") and "pip install 'lbt[tpu]'" in msg and "\n" not in msg
    assert runtime.check_accelerators(Host(0, 4, "v4"), {"cuda": False, "tpu": True}, {}) is None
    assert runtime.check_accelerators(Host(0, 4, "v4"), NO_PLUGINS, {"JAX_PLATFORMS": "cpu"}) is None


def test_gpus_without_cuda_jax_warn_loudly():
    w = runtime.check_accelerators(Host(8, 0, None), NO_PLUGINS, {})
    assert w.startswith("WARNING: this machine has 8 NVIDIA GPU(s)") and "pip install 'lbt[cuda12]'" in w
    assert "simulated CPU devices" in w
    assert runtime.check_accelerators(Host(8, 0, None), {"cuda": True, "tpu": False}, {}) is None
    assert runtime.check_accelerators(Host(8, 0, None), NO_PLUGINS, {"JAX_PLATFORMS": "cpu"}) is None
    assert runtime.check_accelerators(Host(0, 0, None), NO_PLUGINS, {}) is None


def test_backend_fell_back_to_cpu():
    cuda = {"cuda": True, "tpu": False}
    w = runtime.check_backend("cpu", Host(1, 0, None), cuda, {})
    assert w.startswith("WARNING: this machine has NVIDIA GPUs and jax's plugin for them, but JAX started on the CPU")
    assert runtime.check_backend("gpu", Host(1, 0, None), cuda, {}) is None
    assert runtime.check_backend("cpu", Host(1, 0, None), NO_PLUGINS, {}) is None  # warned before JAX started
    assert runtime.check_backend("cpu", Host(1, 0, None), cuda, {"JAX_PLATFORMS": "cpu"}) is None


def test_cpu_requested():
    assert runtime.cpu_requested({"JAX_PLATFORMS": "cpu"}) and runtime.cpu_requested({"JAX_PLATFORMS": " cpu "})
    assert not runtime.cpu_requested({}) and not runtime.cpu_requested({"JAX_PLATFORMS": "cuda,cpu"})


def test_this_machine_and_its_jax():
    """The real probe on this machine; the suite runs with JAX_PLATFORMS=cpu (tests/conftest.py)."""
    host, plugins = runtime.probe_host(), runtime.jax_plugins()
    assert set(plugins) == {"cuda", "tpu"} and host.nvidia_gpus >= 0 and host.tpu_chips >= 0
    assert runtime.check_accelerators(host, plugins) is None
