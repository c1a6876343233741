"""Multi-host runtime initialisation on top of JAX's multi-controller runtime.

Every process runs the same program. ``detect_cluster`` works out, from flags and the
environment, which launcher started this process and how many processes it shows;
``initialize`` hands that to ``jax.distributed.initialize``, which starts the coordination
service on process 0, connects every process to it, and (on CPU) wires up gloo collectives.
There is no lbt launcher: the processes are started by ``srun``, ``mpirun``, ``gcloud ... ssh
--worker=all``, a Kubernetes JobSet, or ``launch/local.sh``.

Precedence (first match wins):

1. explicit values: the ``lbt train --coordinator_address/--num_processes/--process_id`` flags,
   then ``LBT_COORDINATOR_ADDRESS`` / ``LBT_NUM_PROCESSES`` / ``LBT_PROCESS_ID``, per field
   (``JAX_COORDINATOR_ADDRESS`` stands in for the address). A missing rank or count is taken
   from the launcher (``OMPI_COMM_WORLD_RANK/SIZE``, ``PMI_RANK/SIZE``, Kubernetes'
   ``JOB_COMPLETION_INDEX``). lbt passes all three and turns JAX's detection off.
2. ``LBT_CLUSTER=slurm|ompi|tpu|k8s|single`` forces one of the launchers below (or one process).
3. the launcher, found in this order, each left to JAX's own cluster detection
   (``jax._src.clusters``, jax 0.10) where JAX covers it:

   ======= =============================================== ===================================
   source  shown by                                        JAX detection
   ======= =============================================== ===================================
   ompi    ``OMPI_COMM_WORLD_SIZE`` and
           ``OMPI_MCA_orte_hnp_uri`` (Open MPI 4 mpirun)   ``ompi``
   slurm   ``SLURM_NTASKS`` in an ``srun`` step            ``slurm``
   ompi    ``OMPI_COMM_WORLD_SIZE`` (Open MPI 5, PRRTE)    none: needs an explicit coordinator
   mpi     ``PMI_SIZE`` (MPICH, Intel MPI)                 none: needs an explicit coordinator
   tpu     ``TPU_WORKER_HOSTNAMES``/``TPU_PROCESS_ADDRESSES``
           (GKE TPU node pools, queued resources)          ``gketpu``
   k8s     ``JOB_COMPLETION_INDEX`` (indexed Job, JobSet)  auto (``K8sCluster``: needs the
                                                           ``kubernetes`` package, ``jax[k8s]``)
   tpu     TPU chips on this host's PCI bus (a GCE TPU VM) ``gcetpu`` (metadata server)
   ======= =============================================== ===================================

4. otherwise one process (``single``): no ``jax.distributed`` at all.

**Never N copies.** Whenever the environment shows more than one process (``SLURM_NTASKS``,
``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, TPU workers times ``MEGASCALE_NUM_SLICES``) and the run
would fall back to one process (a launcher JAX does not detect and no coordinator; an explicit
``LBT_NUM_PROCESSES=1``; JAX's detection finding nothing or a different count), lbt refuses with
one line naming the variable and the fix, instead of starting N independent runs that write into
one workdir. ``LBT_CLUSTER=single`` is the one explicit way to run single-process anyway (the
workdir lock, :mod:`lbt.train.workdir`, still stops a second live run on the same workdir).

Failure behaviour (jax 0.10): every client sends heartbeats to the coordination service on
process 0. A process that stops heartbeating for ``heartbeat_timeout_s`` is declared dead; the
service then tells every other process, whose client aborts the process with an error naming
the dead task (so a killed peer makes the others exit non-zero instead of hanging). If process
0 itself dies, the other clients notice that their heartbeats fail and abort after the same
timeout. ``initialization_timeout_s`` bounds how long ``initialize`` waits for all processes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence

from lbt.errors import ConfigError

logger = logging.getLogger(__name__)

SOURCES = ("flags", "env", "slurm", "ompi", "mpi", "tpu", "k8s", "single")
FORCEABLE = ("slurm", "ompi", "tpu", "k8s", "single")
#: ``cluster_detection_method`` of an explicit spec: JAX probes nothing.
DEACTIVATE = "deactivate"

_ENV_COORD = "LBT_COORDINATOR_ADDRESS"
_ENV_NPROC = "LBT_NUM_PROCESSES"
_ENV_PID = "LBT_PROCESS_ID"
_ENV_CLUSTER = "LBT_CLUSTER"
_JAX_COORD = "JAX_COORDINATOR_ADDRESS"
_FIELDS = ("coordinator_address", "num_processes", "process_id")
_SINGLE_FIX = f"or set {_ENV_CLUSTER}=single to really train in one process per task"


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process takes part in a (possibly multi-process) run.

    ``num_processes``/``process_id``: the values the environment shows (``None``: only JAX's
    detection knows, e.g. a GCE TPU VM's metadata server). ``detection``: the
    ``cluster_detection_method`` for ``jax.distributed.initialize``; with ``"deactivate"`` lbt
    passes all three values, otherwise only ``coordinator_address`` (``None``: JAX finds it) and
    JAX detects the rest, which :func:`initialize` then checks against these values.
    ``local_device_ids``: ``None`` keeps JAX's default, ``()`` makes every local accelerator
    visible to this process, a tuple restricts the process to those device ids. ``evidence``:
    what showed the launcher (for messages), e.g. ``"SLURM_NTASKS=4"``.
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    source: str
    local_device_ids: tuple[int, ...] | None = None
    detection: str | None = DEACTIVATE
    evidence: str = ""

    @property
    def is_multiprocess(self) -> bool:
        return self.source != "single"


SINGLE = ClusterSpec(None, 1, 0, "single")


def _parse_int(field: str, value, origin: str, fix: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(field, f"{origin}={value!r} is not an integer; {fix}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(field, f"{origin}={value!r} is not an integer; {fix}") from None


_ADDR_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d+)$")


def _check_address(address: str, origin: str) -> str:
    address = str(address).strip()
    m = _ADDR_RE.match(address)
    if not m or not (1 <= int(m.group(2)) <= 65535):
        raise ConfigError(
            "coordinator_address",
            f"{origin}={address!r} is not host:port; set it to the address of process 0 "
            "and a free port that every process can reach, e.g. 10.0.0.1:12345",
        )
    return address


def _env_int(env: Mapping[str, str], name: str, field: str) -> int | None:
    raw = env.get(name)
    if raw is None or not str(raw).strip():
        return None
    return _parse_int(field, raw, name, "it is set by the launcher; unset it if this process was not started by one")


def evidence(env: Mapping[str, str]) -> list[tuple[str, int]]:
    """The variables that show more than one process, as ``(text, count)``; pure."""
    found = []
    # Inside an srun step the step's task count matters, not the allocation's SLURM_NTASKS.
    slurm = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    for name in (slurm, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        n = _env_int(env, name, "num_processes")
        if n is not None and n > 1:
            found.append((f"{name}={n}", n))
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    if hosts:
        n = len([h for h in hosts.split(",") if h.strip()]) * (
            _env_int(env, "MEGASCALE_NUM_SLICES", "num_processes") or 1
        )
        if n > 1:
            found.append((f"TPU_WORKER_HOSTNAMES lists {n} workers", n))
    return found


# (count, rank, local count, local rank) of launchers whose variables stand in for missing fields.
_STAND_INS = (
    (
        "ompi",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    ("mpi", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS", "MPI_LOCALRANKID"),
    ("k8s", None, "JOB_COMPLETION_INDEX", None, None),
)


def _local_ids(env: Mapping[str, str], local_size: str | None, local_rank: str | None) -> tuple[int, ...] | None:
    """One device per process when several processes share a host, else every local device."""
    size = _env_int(env, local_size, "process_id") if local_size else None
    if size is None:
        return None
    if size <= 1:
        return ()
    rank = _env_int(env, local_rank, "process_id") if local_rank else None
    return None if rank is None else (rank,)


def _explicit(env: Mapping[str, str], merged: dict, origins: dict, source: str) -> ClusterSpec:
    """Flags/``LBT_*`` (plus launcher stand-ins for a missing rank or count), validated."""
    local_ids = None
    launcher = next((st for st in _STAND_INS if env.get(st[2])), None)  # the first launcher present
    if launcher is not None:
        name, size, rank, lsize, lrank = launcher
        filled = False
        if merged["process_id"] is None:
            merged["process_id"], origins["process_id"], filled = env[rank], rank, True
        if size and merged["num_processes"] is None and env.get(size):
            merged["num_processes"], origins["num_processes"], filled = env[size], size, True
        local_ids = _local_ids(env, lsize, lrank)
        if filled and source == "env":
            source = name
    coord, nproc, pid = merged["coordinator_address"], merged["num_processes"], merged["process_id"]
    if nproc is None:
        given = origins["coordinator_address"] if coord is not None else origins["process_id"]
        raise ConfigError(
            "num_processes",
            f"{given} is set but the number of processes is not; set --num_processes "
            f"(or {_ENV_NPROC}) to the total number of processes on every process",
        )
    nproc = _parse_int(
        "num_processes", nproc, origins["num_processes"], "set it to the total number of processes, e.g. 2"
    )
    if nproc < 1:
        raise ConfigError("num_processes", f"{origins['num_processes']}={nproc} must be >= 1")
    if pid is not None:
        pid = _parse_int("process_id", pid, origins["process_id"], f"set it to this process's rank in 0..{nproc - 1}")
        if not 0 <= pid < nproc:
            raise ConfigError(
                "process_id",
                f"{origins['process_id']}={pid} is outside 0..{nproc - 1} "
                f"(num_processes={nproc}); give each process a distinct rank in that range",
            )
    if nproc == 1:
        shown = evidence(env)
        if shown:
            raise ConfigError(
                "num_processes",
                f"{origins['num_processes']}=1 but {shown[0][0]} shows {shown[0][1]} processes: they would be "
                f"{shown[0][1]} independent runs in one workdir; unset {origins['num_processes']} {_SINGLE_FIX}",
            )
        if coord is not None:
            _check_address(coord, origins["coordinator_address"])
        return SINGLE
    if pid is None:
        raise ConfigError(
            "process_id",
            f"num_processes={nproc} but this process's rank is not set; set --process_id "
            f"(or {_ENV_PID}) to a distinct value in 0..{nproc - 1} on each process",
        )
    if coord is None:
        raise ConfigError(
            "coordinator_address",
            f"num_processes={nproc} but no coordinator is set; set --coordinator_address "
            f"(or {_ENV_COORD}) to host:port of process 0, the same on every process",
        )
    coord = _check_address(coord, origins["coordinator_address"])
    return ClusterSpec(coord, nproc, pid, source, local_ids, DEACTIVATE)


def _need_coordinator(what: str, n: int, why: str) -> ConfigError:
    return ConfigError(
        "coordinator_address",
        f"{what} shows {n} processes but {why}, so the processes cannot find each other; set "
        f"{_ENV_COORD} (or {_JAX_COORD}) to host:port of rank 0, the same on every process "
        f"(e.g. mpirun -x {_ENV_COORD}=<host of rank 0>:12345 ...), {_SINGLE_FIX}",
    )


def _slurm(env: Mapping[str, str], coord: str | None, forced: bool) -> ClusterSpec | None:
    ntasks_name = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    ntasks = _env_int(env, ntasks_name, "num_processes")
    if ntasks is None:
        if forced:
            raise ConfigError(
                "num_processes",
                f"{_ENV_CLUSTER}=slurm but SLURM_NTASKS is not set; run inside an "
                "sbatch/salloc allocation and start every process with srun",
            )
        return None
    if ntasks <= 1 and not forced:
        return SINGLE
    missing = [v for v in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST") if v not in env]
    if missing:
        raise ConfigError(
            "num_processes",
            f"{ntasks_name}={ntasks} but {', '.join(missing)} not set: this process was not "
            "started by srun; start every process with `srun lbt train ...` (see "
            f"launch/slurm.sbatch), {_SINGLE_FIX}",
        )
    pid = _parse_int("process_id", env["SLURM_PROCID"], "SLURM_PROCID", "launch with srun")
    if not 0 <= pid < ntasks:
        raise ConfigError("process_id", f"SLURM_PROCID={pid} is outside 0..{ntasks - 1}")
    if ntasks == 1:
        return SINGLE
    # JAX restricts each SLURM task to the single device SLURM_LOCALID (one process per GPU).
    # With one task per node we want every GPU of the node.
    local_ids = None
    nnodes = _env_int(env, "SLURM_STEP_NUM_NODES", "num_processes") or _env_int(env, "SLURM_NNODES", "num_processes")
    if nnodes == ntasks:
        local_ids = ()
    return ClusterSpec(coord, ntasks, pid, "slurm", local_ids, "slurm", f"{ntasks_name}={ntasks}")


def _mpi(env: Mapping[str, str], coord: str | None, name: str) -> ClusterSpec | None:
    """Open MPI (``name="ompi"``) or a PMI launcher (MPICH/Intel MPI Hydra, ``name="mpi"``)."""
    _, size_var, rank_var, lsize, lrank = next(s for s in _STAND_INS if s[0] == name)
    n = _env_int(env, size_var, "num_processes")
    if n is None or n <= 1:
        return None if n is None else SINGLE
    pid = _env_int(env, rank_var, "process_id")
    if pid is None or not 0 <= pid < n:
        raise ConfigError("process_id", f"{size_var}={n} but {rank_var}={env.get(rank_var)!r} is not in 0..{n - 1}")
    local_ids = _local_ids(env, lsize, lrank)
    shown = f"{size_var}={n}"
    if name == "ompi" and "OMPI_MCA_orte_hnp_uri" in env:  # Open MPI 4's mpirun: JAX's OmpiCluster
        return ClusterSpec(coord, n, pid, "ompi", () if local_ids == () else None, "ompi", shown)
    if coord is None:
        why = (
            "this Open MPI sets no OMPI_MCA_orte_hnp_uri (Open MPI 5), from which JAX finds rank 0"
            if name == "ompi"
            else "JAX does not detect MPICH/Intel MPI launchers"
        )
        raise _need_coordinator(shown, n, why)
    return ClusterSpec(coord, n, pid, name, local_ids, DEACTIVATE, shown)


def _tpu_env(env: Mapping[str, str], coord: str | None) -> ClusterSpec | None:
    """GKE TPU node pools (and queued resources) list the slice's workers in the environment."""
    hosts_raw = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    if hosts_raw is None:
        return None
    hosts = [h for h in hosts_raw.split(",") if h.strip()]
    nslices = _env_int(env, "MEGASCALE_NUM_SLICES", "num_processes") or 1
    nproc = len(hosts) * nslices
    if nproc <= 1:
        return SINGLE
    if "TPU_WORKER_ID" not in env:
        raise ConfigError(
            "process_id",
            "TPU_WORKER_HOSTNAMES lists several hosts but TPU_WORKER_ID is not set; set it "
            "to this host's index in that list (GKE sets it for TPU node pools)",
        )
    wid = _parse_int(
        "process_id", env["TPU_WORKER_ID"], "TPU_WORKER_ID", "set it to this host's index in TPU_WORKER_HOSTNAMES"
    )
    if not 0 <= wid < len(hosts):
        raise ConfigError(
            "process_id", f"TPU_WORKER_ID={wid} is outside 0..{len(hosts) - 1} (the hosts in TPU_WORKER_HOSTNAMES)"
        )
    slice_id = _env_int(env, "MEGASCALE_SLICE_ID", "process_id") or 0
    shown = f"TPU_WORKER_HOSTNAMES lists {nproc} workers"
    return ClusterSpec(coord, nproc, wid + slice_id * len(hosts), "tpu", None, "gketpu", shown)


def _k8s(env: Mapping[str, str], coord: str | None) -> ClusterSpec:
    index = env.get("JOB_COMPLETION_INDEX")
    pid = None if index is None else _parse_int("process_id", index, "JOB_COMPLETION_INDEX", "it is set by Kubernetes")
    shown = "a pod of an indexed Kubernetes Job" + ("" if index is None else f" (JOB_COMPLETION_INDEX={index})")
    return ClusterSpec(coord, None, pid, "k8s", None, None, shown)


def _gce_tpu(coord: str | None, tpu_chips: int) -> ClusterSpec:
    shown = f"a TPU VM ({tpu_chips} TPU chips on this host)" if tpu_chips else f"{_ENV_CLUSTER}=tpu"
    return ClusterSpec(coord, None, None, "tpu", None, "gcetpu", shown)


def _launcher(env: Mapping[str, str], coord: str | None, forced: str, tpu_chips: int) -> ClusterSpec | None:
    """The spec of the launcher that started this process (``forced``: ``LBT_CLUSTER``), or None."""
    if forced == "slurm":
        return _slurm(env, coord, forced=True)
    if forced == "ompi":
        spec = _mpi(env, coord, "ompi")
        if spec is None:
            raise ConfigError(
                "num_processes", f"{_ENV_CLUSTER}=ompi but OMPI_COMM_WORLD_SIZE is not set; start with mpirun"
            )
        return spec
    if forced == "tpu":
        return _tpu_env(env, coord) or _gce_tpu(coord, tpu_chips)
    if forced == "k8s":
        return _k8s(env, coord)
    if "OMPI_MCA_orte_hnp_uri" in env and (spec := _mpi(env, coord, "ompi")) is not None:
        return spec
    for find in (
        lambda: _slurm(env, coord, forced=False),
        lambda: _mpi(env, coord, "ompi"),
        lambda: _mpi(env, coord, "mpi"),
        lambda: _tpu_env(env, coord),
    ):
        spec = find()
        if spec is not None:  # the first launcher present decides, also when it shows one process
            return spec
    if env.get("JOB_COMPLETION_INDEX"):
        return _k8s(env, coord)
    if tpu_chips > 0 and not env.get("TPU_SKIP_MDS_QUERY"):
        return _gce_tpu(coord, tpu_chips)
    return None


def detect_cluster(
    env: Mapping[str, str],
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    tpu_chips: int = 0,
) -> ClusterSpec:
    """Works out this process's place in the run. Pure: reads only ``env`` and the arguments.

    ``tpu_chips``: TPU chips on this host (:func:`lbt.runtime.probe_host`), which marks a GCE
    TPU VM, whose workers only the metadata server knows. Raises ``ConfigError`` for partial or
    inconsistent settings, and whenever the environment shows several processes that would run
    as independent single-process runs.
    """
    given = dict(zip(_FIELDS, (coordinator_address, num_processes, process_id)))
    env_names = dict(zip(_FIELDS, (_ENV_COORD, _ENV_NPROC, _ENV_PID)))
    merged, origins = {}, {}
    for k in _FIELDS:
        if given[k] is not None:
            merged[k], origins[k] = given[k], f"--{k}"
        else:
            merged[k], origins[k] = env.get(env_names[k]) or None, env_names[k]
    if merged["coordinator_address"] is None and env.get(_JAX_COORD):
        merged["coordinator_address"], origins["coordinator_address"] = env[_JAX_COORD], _JAX_COORD
    forced = (env.get(_ENV_CLUSTER) or "").strip().lower()
    if forced and forced not in FORCEABLE:
        raise ConfigError(
            "cluster",
            f"{_ENV_CLUSTER}={env[_ENV_CLUSTER]!r} is not one of {', '.join(FORCEABLE)}; unset it to auto-detect",
        )
    source = "flags" if any(v is not None for v in given.values()) else "env"
    if merged["num_processes"] is not None or merged["process_id"] is not None:
        return _explicit(env, merged, origins, source)
    if forced == "single":
        return SINGLE
    coord = merged["coordinator_address"]
    if coord is not None:
        coord = _check_address(coord, origins["coordinator_address"])
    spec = _launcher(env, coord, forced, tpu_chips)
    if spec is not None:
        return spec
    if coord is not None:
        raise ConfigError(
            "num_processes",
            f"{origins['coordinator_address']} is set but the number of processes is not, and no launcher "
            f"(srun, mpirun, a TPU slice, Kubernetes) shows it; set --num_processes (or {_ENV_NPROC}) and "
            f"--process_id (or {_ENV_PID}) on every process",
        )
    return SINGLE


_FIX = {
    "slurm": "start every task with srun inside the allocation (launch/slurm.sbatch)",
    "ompi": f"set {_ENV_COORD}, {_ENV_NPROC} and {_ENV_PID} explicitly",
    "mpi": f"set {_ENV_COORD}, {_ENV_NPROC} and {_ENV_PID} explicitly",
    "tpu": f"install jax[tpu] (pip install 'lbt[tpu]'); outside GCE set {_ENV_COORD}, {_ENV_NPROC} and {_ENV_PID}",
    "k8s": (
        f"set {_ENV_COORD} and {_ENV_NPROC} in the pod spec as launch/k8s_jobset.yaml does (JAX's own "
        "detection needs `pip install 'jax[k8s]'` and a service account that may read pods and jobs)"
    ),
}


def _check_joined(spec: ClusterSpec, count: int, index: int) -> None:
    """After a detected start: the processes JAX connected must be the ones the environment shows."""
    if spec.num_processes is not None and count != spec.num_processes:
        raise ConfigError(
            "num_processes",
            f"{spec.evidence} but jax.distributed started {count} processes; {_FIX.get(spec.source, '')}",
        )
    if spec.process_id is not None and index != spec.process_id:
        raise ConfigError(
            "process_id", f"{spec.evidence}: this process should be rank {spec.process_id} but JAX made it {index}"
        )


def initialize(
    spec: ClusterSpec,
    *,
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 60,
    shutdown_timeout_s: int = 300,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Starts JAX's multi-controller runtime for ``spec``. No-op for ``"single"``.

    Must run before anything touches a JAX backend (``jax.devices()``, any computation).
    ``heartbeat_timeout_s``: a process silent this long is declared dead and every other
    process aborts with an error. ``initialization_timeout_s``: how long to wait for all
    processes to connect. ``shutdown_timeout_s``: how long a finishing process waits for the
    others at exit. With JAX's detection (``spec.detection`` not ``"deactivate"``) a launcher
    JAX does not find, or a process count other than the environment's, is a ``ConfigError``.
    """
    import jax

    if spec.source not in SOURCES:
        raise ConfigError("cluster", f"unknown cluster source {spec.source!r}; one of {SOURCES}")
    if spec.source == "single":
        return
    if jax.distributed.is_initialized():
        logger.info("jax.distributed already initialised; not initialising again")
        return
    for name, value in (
        ("initialization_timeout_s", initialization_timeout_s),
        ("heartbeat_timeout_s", heartbeat_timeout_s),
        ("shutdown_timeout_s", shutdown_timeout_s),
    ):
        if int(value) < 1:
            raise ConfigError(name, f"{name}={value} must be a positive number of seconds")
    if local_device_ids is None and spec.local_device_ids is not None:
        # An empty list keeps JAX's auto-detection for the other fields but stops it from
        # restricting the process to one device (one SLURM task / MPI rank per node).
        local_device_ids = list(spec.local_device_ids)
    explicit = spec.detection == DEACTIVATE
    kwargs = dict(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes if explicit else None,
        process_id=spec.process_id if explicit else None,
        local_device_ids=local_device_ids,
        cluster_detection_method=spec.detection,
        initialization_timeout=int(initialization_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        shutdown_timeout_seconds=int(shutdown_timeout_s),
    )
    logger.info(
        "initialising jax.distributed (source=%s%s, coordinator=%s, num_processes=%s, process_id=%s, "
        "detection=%s, heartbeat_timeout=%ss, initialization_timeout=%ss)",
        spec.source,
        f": {spec.evidence}" if spec.evidence else "",
        spec.coordinator_address or "<auto>",
        spec.num_processes or "<auto>",
        spec.process_id if spec.process_id is not None else "<auto>",
        spec.detection or "auto",
        heartbeat_timeout_s,
        initialization_timeout_s,
    )
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # JAX's detection found nothing: "coordinator_address should be defined." etc.
        if explicit:
            raise
        why = " ".join(str(e).split())[:300]
        raise ConfigError(
            "cluster",
            f"{spec.evidence} but JAX's {spec.detection or 'automatic'} cluster detection could not start the run "
            f"({why}); {_FIX.get(spec.source, '')}, {_SINGLE_FIX}",
        ) from e
    if not explicit:
        _check_joined(spec, jax.process_count(), jax.process_index())


def describe() -> str:
    """One log line: this process, process count, local/global device counts and kinds."""
    import jax

    local = jax.local_devices()
    glob = jax.devices()

    def kinds(devs):
        counts: dict[str, int] = {}
        for d in devs:
            counts[d.device_kind] = counts.get(d.device_kind, 0) + 1
        return ",".join(f"{n}x {k}" for k, n in sorted(counts.items()))

    return (
        f"process {jax.process_index()}/{jax.process_count()} on {jax.default_backend()}: "
        f"{len(local)} local devices ({kinds(local)}), {len(glob)} global devices ({kinds(glob)})"
    )


def is_primary() -> bool:
    """True on process 0, the one that writes metrics, TensorBoard and plots."""
    import jax

    return jax.process_index() == 0
