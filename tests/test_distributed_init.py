"""Multi-host runtime: cluster detection (pure) and real 2-process runs on CPU."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import portpicker
import pytest

from lbt.errors import ConfigError
from lbt.parallel.distributed import SINGLE, ClusterSpec, detect_cluster

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- detection


def test_single_by_default():
    assert detect_cluster({}) == ClusterSpec(None, 1, 0, "single")


def test_flags_win_over_env_per_field():
    env = {"LBT_COORDINATOR_ADDRESS": "envhost:1", "LBT_NUM_PROCESSES": "4", "LBT_PROCESS_ID": "3"}
    spec = detect_cluster(env, coordinator_address="flaghost:1234", process_id=1)
    assert spec == ClusterSpec("flaghost:1234", 4, 1, "flags")


def test_env_only():
    env = {"LBT_COORDINATOR_ADDRESS": "10.0.0.1:8476", "LBT_NUM_PROCESSES": "2", "LBT_PROCESS_ID": "1"}
    assert detect_cluster(env) == ClusterSpec("10.0.0.1:8476", 2, 1, "env")


def test_env_beats_slurm():
    env = {
        "LBT_COORDINATOR_ADDRESS": "h:1",
        "LBT_NUM_PROCESSES": "2",
        "LBT_PROCESS_ID": "0",
        **_slurm_env(ntasks=8, procid=5),
    }
    assert detect_cluster(env).source == "env"


def test_one_process_is_single():
    assert detect_cluster({}, num_processes=1).source == "single"
    assert detect_cluster({"LBT_NUM_PROCESSES": "1"}) == ClusterSpec(None, 1, 0, "single")


@pytest.mark.parametrize(
    "kwargs, env, field",
    [
        (dict(num_processes=2, process_id=0), {}, "coordinator_address"),
        (dict(coordinator_address="h:1", num_processes=2), {}, "process_id"),
        (dict(coordinator_address="h:1", process_id=0), {}, "num_processes"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "process_id"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=-1), {}, "process_id"),
        (dict(coordinator_address="h:1", num_processes=0, process_id=0), {}, "num_processes"),
        (dict(coordinator_address="nohostport", num_processes=2, process_id=0), {}, "coordinator_address"),
        (dict(coordinator_address="h:99999", num_processes=2, process_id=0), {}, "coordinator_address"),
        ({}, {"LBT_NUM_PROCESSES": "two", "LBT_PROCESS_ID": "0", "LBT_COORDINATOR_ADDRESS": "h:1"}, "num_processes"),
        ({}, {"LBT_NUM_PROCESSES": "2"}, "process_id"),
        ({}, {"LBT_CLUSTER": "mpi"}, "cluster"),
    ],
)
def test_partial_or_inconsistent_settings_raise(kwargs, env, field):
    with pytest.raises(ConfigError) as e:
        detect_cluster(env, **kwargs)
    assert e.value.field == field
    msg = str(e.value)
    assert msg.startswith(f"config.{field}: ") and "\n" not in msg


def _slurm_env(ntasks, procid, nnodes=None, localid=0):
    env = {
        "SLURM_JOB_ID": "1234",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_STEP_NODELIST": "node[001-004]",
    }
    if nnodes is not None:
        env["SLURM_STEP_NUM_NODES"] = str(nnodes)
    return env


def test_slurm_one_task_per_node_sees_all_local_devices():
    spec = detect_cluster(_slurm_env(ntasks=4, procid=2, nnodes=4))
    assert spec == ClusterSpec(None, 4, 2, "slurm", (), "slurm", "SLURM_NTASKS=4")


def test_slurm_task_per_gpu_keeps_jax_default():
    spec = detect_cluster(_slurm_env(ntasks=8, procid=5, nnodes=2, localid=1))
    assert spec == ClusterSpec(None, 8, 5, "slurm", None, "slurm", "SLURM_NTASKS=8")


def test_slurm_single_task_is_single():
    assert detect_cluster(_slurm_env(ntasks=1, procid=0)).source == "single"
    # srun -n1 inside a 4-task allocation: the step's count decides
    assert detect_cluster({**_slurm_env(ntasks=4, procid=0), "SLURM_STEP_NUM_TASKS": "1"}) == SINGLE


def test_slurm_without_srun_raises():
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"}  # inside sbatch, but not an srun step
    with pytest.raises(ConfigError, match="srun"):
        detect_cluster(env)


def test_lbt_cluster_single_overrides_slurm():
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4", "LBT_CLUSTER": "single"}
    assert detect_cluster(env).source == "single"


def test_tpu_worker_env():
    env = {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3", "TPU_WORKER_ID": "3"}
    assert detect_cluster(env) == ClusterSpec(
        None, 4, 3, "tpu", None, "gketpu", "TPU_WORKER_HOSTNAMES lists 4 workers"
    )
    env.update(MEGASCALE_NUM_SLICES="2", MEGASCALE_SLICE_ID="1")
    spec = detect_cluster(env)
    assert (spec.num_processes, spec.process_id) == (8, 7)
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "w0", "TPU_WORKER_ID": "0"}).source == "single"
    with pytest.raises(ConfigError, match="TPU_WORKER_ID"):
        detect_cluster({"TPU_WORKER_HOSTNAMES": "w0,w1"})


def test_forced_tpu_and_k8s_leave_it_to_jax():
    assert detect_cluster({"LBT_CLUSTER": "tpu"}) == ClusterSpec(
        None, None, None, "tpu", None, "gcetpu", "LBT_CLUSTER=tpu"
    )
    spec = detect_cluster({"LBT_CLUSTER": "k8s"})
    assert (spec.source, spec.num_processes, spec.process_id, spec.detection) == ("k8s", None, None, None)


def test_gce_tpu_vm_without_lbt_cluster():
    """A GCE TPU VM shows nothing in the environment: its TPU chips mark it, JAX asks the metadata server."""
    spec = detect_cluster({}, tpu_chips=4)
    assert spec == ClusterSpec(None, None, None, "tpu", None, "gcetpu", "a TPU VM (4 TPU chips on this host)")
    assert detect_cluster({"TPU_SKIP_MDS_QUERY": "1"}, tpu_chips=4) == SINGLE  # not on GCE
    assert detect_cluster({"LBT_CLUSTER": "single"}, tpu_chips=4) == SINGLE


def _ompi_env(size, rank, local_size=None, local_rank=0, orte=True):
    env = {
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(local_rank),
    }
    if local_size is not None:
        env["OMPI_COMM_WORLD_LOCAL_SIZE"] = str(local_size)
    if orte:
        env["OMPI_MCA_orte_hnp_uri"] = "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"
    return env


def test_open_mpi_4_is_left_to_jax():
    """`mpirun -np 4 lbt train`: one 4-process run (JAX's OmpiCluster), not 4 single-process runs."""
    spec = detect_cluster(_ompi_env(4, 2, local_size=4, local_rank=2))
    assert spec == ClusterSpec(None, 4, 2, "ompi", None, "ompi", "OMPI_COMM_WORLD_SIZE=4")  # JAX: 1 GPU per rank
    assert detect_cluster(_ompi_env(4, 1, local_size=1)).local_device_ids == ()  # one rank per node: all GPUs
    assert detect_cluster(_ompi_env(1, 0)) == SINGLE


def test_open_mpi_5_needs_a_coordinator():
    env = _ompi_env(4, 3, local_size=2, local_rank=1, orte=False)
    with pytest.raises(ConfigError) as e:
        detect_cluster(env)
    assert e.value.field == "coordinator_address"
    assert "OMPI_COMM_WORLD_SIZE=4 shows 4 processes" in str(e.value) and "OMPI_MCA_orte_hnp_uri" in str(e.value)
    for var in ("LBT_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"):
        spec = detect_cluster({**env, var: "node0:1234"})
        assert spec == ClusterSpec("node0:1234", 4, 3, "ompi", (1,), "deactivate", "OMPI_COMM_WORLD_SIZE=4")


def test_mpich_pmi_with_and_without_coordinator():
    env = {"PMI_SIZE": "2", "PMI_RANK": "1", "MPI_LOCALNRANKS": "1", "MPI_LOCALRANKID": "0"}
    with pytest.raises(ConfigError, match="PMI_SIZE=2 shows 2 processes"):
        detect_cluster(env)
    spec = detect_cluster({**env, "JAX_COORDINATOR_ADDRESS": "h0:99"})
    assert spec == ClusterSpec("h0:99", 2, 1, "mpi", (), "deactivate", "PMI_SIZE=2")


def test_k8s_completion_index_is_process_id():
    env = {
        "LBT_COORDINATOR_ADDRESS": "run-workers-0-0.run:1234",
        "LBT_NUM_PROCESSES": "4",
        "JOB_COMPLETION_INDEX": "2",
    }
    assert detect_cluster(env) == ClusterSpec("run-workers-0-0.run:1234", 4, 2, "k8s")


def test_k8s_indexed_job_without_lbt_env_is_left_to_jax():
    """Today's trap: JOB_COMPLETION_INDEX alone used to be a single-process run in every pod."""
    env = {"JOB_COMPLETION_INDEX": "3", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    spec = detect_cluster(env)
    assert (spec.source, spec.process_id, spec.num_processes, spec.detection) == ("k8s", 3, None, None)
    assert detect_cluster({**env, "LBT_CLUSTER": "single"}) == SINGLE


def test_jax_coordinator_address():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476", "LBT_NUM_PROCESSES": "2", "LBT_PROCESS_ID": "1"}
    assert detect_cluster(env) == ClusterSpec("10.0.0.1:8476", 2, 1, "env")
    assert detect_cluster({**env, "LBT_COORDINATOR_ADDRESS": "h:2"}).coordinator_address == "h:2"  # LBT_* wins
    # with srun the count comes from SLURM (JAX's detection), the coordinator from the variable
    spec = detect_cluster({"JAX_COORDINATOR_ADDRESS": "n0:5000", **_slurm_env(ntasks=4, procid=1)})
    assert (spec.source, spec.coordinator_address, spec.num_processes, spec.detection) == (
        "slurm",
        "n0:5000",
        4,
        "slurm",
    )
    with pytest.raises(ConfigError) as e:  # nothing says how many processes there are
        detect_cluster({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476"})
    assert e.value.field == "num_processes" and "JAX_COORDINATOR_ADDRESS is set" in str(e.value)
    with pytest.raises(ConfigError, match="host:port"):
        detect_cluster({"JAX_COORDINATOR_ADDRESS": "nohost"})


@pytest.mark.parametrize(
    "env, shown",
    [
        ({**_slurm_env(ntasks=4, procid=0), "LBT_NUM_PROCESSES": "1"}, "SLURM_NTASKS=4"),
        ({**_ompi_env(4, 0), "LBT_NUM_PROCESSES": "1"}, "OMPI_COMM_WORLD_SIZE=4"),
        ({"PMI_SIZE": "3", "PMI_RANK": "0", "LBT_NUM_PROCESSES": "1"}, "PMI_SIZE=3"),
        (
            {"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "0", "LBT_NUM_PROCESSES": "1"},
            "TPU_WORKER_HOSTNAMES lists 2",
        ),
    ],
)
def test_explicit_one_process_under_a_multiprocess_launcher_refuses(env, shown):
    with pytest.raises(ConfigError) as e:
        detect_cluster(env)
    msg = str(e.value)
    assert e.value.field == "num_processes" and shown in msg and "independent runs in one workdir" in msg
    assert "LBT_CLUSTER=single" in msg and "\n" not in msg
    assert detect_cluster({**env, "LBT_NUM_PROCESSES": "", "LBT_CLUSTER": "single"}) == SINGLE


# ---------------------------------------------------------------- initialize (JAX's entry point faked)


class _FakeDistributed:
    """Stands in for ``jax.distributed``: records the kwargs, then behaves like JAX's detection."""

    def __init__(self, result=None, error=None):
        self.calls, self.result, self.error = [], result, error

    def is_initialized(self):
        return False

    def initialize(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error


@pytest.fixture
def fake_jax(monkeypatch):
    import jax

    def install(result=(4, 2), error=None):
        fake = _FakeDistributed(error=error)
        monkeypatch.setattr(jax, "distributed", fake)
        monkeypatch.setattr(jax, "process_count", lambda: result[0])
        monkeypatch.setattr(jax, "process_index", lambda: result[1])
        return fake

    return install


def test_initialize_defers_to_jax_detection_and_checks_the_count(fake_jax):
    from lbt.parallel import distributed

    fake = fake_jax(result=(4, 2))
    spec = detect_cluster(_slurm_env(ntasks=4, procid=2, nnodes=4))
    distributed.initialize(spec, heartbeat_timeout_s=7)
    [kw] = fake.calls
    assert kw["cluster_detection_method"] == "slurm" and kw["heartbeat_timeout_seconds"] == 7
    assert (kw["coordinator_address"], kw["num_processes"], kw["process_id"], kw["local_device_ids"]) == (
        None,
        None,
        None,
        [],
    )

    fake_jax(result=(1, 0))  # JAX's detection came up with one process: refuse, never N copies
    with pytest.raises(ConfigError) as e:
        distributed.initialize(spec)
    assert e.value.field == "num_processes" and "SLURM_NTASKS=4 but jax.distributed started 1 processes" in str(
        e.value
    )


def test_initialize_explicit_passes_everything(fake_jax):
    from lbt.parallel import distributed

    fake = fake_jax()
    distributed.initialize(ClusterSpec("h:1", 2, 1, "env"))
    [kw] = fake.calls
    assert kw["cluster_detection_method"] == "deactivate"
    assert (kw["coordinator_address"], kw["num_processes"], kw["process_id"]) == ("h:1", 2, 1)


def test_initialize_undetected_cluster_is_a_config_error(fake_jax):
    from lbt.parallel import distributed

    fake_jax(error=ValueError("coordinator_address should be defined."))
    spec = detect_cluster({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ConfigError) as e:
        distributed.initialize(spec)
    msg = str(e.value)
    assert (
        e.value.field == "cluster"
        and "JOB_COMPLETION_INDEX=1" in msg
        and "coordinator_address should be defined" in msg
    )
    assert "LBT_NUM_PROCESSES" in msg and "jax[k8s]" in msg and "\n" not in msg


# ---------------------------------------------------------------- 2 real processes

HEARTBEAT_S = 3
_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from lbt.parallel import distributed

    spec = distributed.detect_cluster(os.environ)
    distributed.initialize(spec, initialization_timeout_s=int(os.environ["INIT_TIMEOUT"]),
                           heartbeat_timeout_s=int(os.environ["HEARTBEAT"]))
    print("DESCRIBE", distributed.describe(), flush=True)
    print("PRIMARY", distributed.is_primary(), flush=True)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    n, per = 64, 64 // jax.process_count()
    i = jax.process_index()
    local = np.arange(n, dtype=np.float32)[i * per:(i + 1) * per]  # contiguous slice
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local, (n,))
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(x)
    print("RESULT", jax.process_count(), jax.device_count(), float(total), flush=True)
    if os.environ.get("MODE") == "wait":
        from jax.experimental import multihost_utils
        print("READY", flush=True)
        if i == int(os.environ["VICTIM"]):
            time.sleep(600)
        for k in range(10_000):  # blocks: the victim never arrives
            multihost_utils.sync_global_devices(f"barrier-{k}")
        print("UNREACHABLE", flush=True)
    """
)


def _start(tmp_path, nproc, mode="", victim=1, init_timeout=30, ids=None):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(nproc) if ids is None else ids:
        env = dict(os.environ)
        env.update(
            JAX_PLATFORMS="cpu",
            PYTHONPATH=str(REPO),
            LBT_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            LBT_NUM_PROCESSES=str(nproc),
            LBT_PROCESS_ID=str(pid),
            MODE=mode,
            VICTIM=str(victim),
            HEARTBEAT=str(HEARTBEAT_S),
            INIT_TIMEOUT=str(init_timeout),
            PYTHONUNBUFFERED="1",
        )
        for k in ("SLURM_NTASKS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "LBT_CLUSTER"):
            env.pop(k, None)
        out = open(tmp_path / f"p{pid}.log", "w+")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
                ),
                out,
            )
        )
    return procs


def _log(tmp_path, pid):
    return (tmp_path / f"p{pid}.log").read_text()


def _kill_all(procs):
    for p, out in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        out.close()


def test_two_processes_global_sum(tmp_path):
    procs = _start(tmp_path, 2)
    try:
        for p, _ in procs:
            assert p.wait(timeout=120) == 0
    finally:
        _kill_all(procs)
    for pid in (0, 1):
        log = _log(tmp_path, pid)
        assert f"RESULT 2 8 {float(sum(range(64)))}" in log, log
        assert f"process {pid}/2 on cpu: 4 local devices (4x cpu), 8 global devices (8x cpu)" in log
        assert f"PRIMARY {pid == 0}" in log


@pytest.mark.parametrize("victim", [1, 0], ids=["peer-dies", "coordinator-dies"])
def test_killed_peer_makes_survivor_exit(tmp_path, victim):
    procs = _start(tmp_path, 2, mode="wait", victim=victim)
    survivor = 1 - victim
    try:
        deadline = time.monotonic() + 120
        while not all("READY" in _log(tmp_path, i) for i in (0, 1)):
            assert time.monotonic() < deadline, _log(tmp_path, 0) + _log(tmp_path, 1)
            assert all(p.poll() is None for p, _ in procs), _log(tmp_path, 0) + _log(tmp_path, 1)
            time.sleep(0.1)
        time.sleep(0.5)  # let the survivor enter the barrier
        procs[victim][0].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        rc = procs[survivor][0].wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        _kill_all(procs)
    log = _log(tmp_path, survivor)
    assert rc != 0, log
    assert "UNREACHABLE" not in log
    # Detected by the heartbeat (HEARTBEAT_S) or sooner (closed connection).
    assert elapsed < HEARTBEAT_S + 20, (elapsed, log)
    assert "distributed service detected fatal errors" in log or "heartbeat" in log.lower(), log


def test_missing_peer_fails_initialization(tmp_path):
    procs = _start(tmp_path, 2, init_timeout=3, ids=[1])  # process 0 never starts
    try:
        t0 = time.monotonic()
        rc = procs[0][0].wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        _kill_all(procs)
    assert rc != 0
    assert elapsed < 30, elapsed
    assert "RESULT" not in _log(tmp_path, 1)
