"""Multi-host runtime initialisation on top of JAX's multi-controller runtime.

Every process runs the same program. ``detect_cluster`` works out, from flags
and the environment, how many processes there are, which one this is and where
process 0's coordinator listens; ``initialize`` hands that to
``jax.distributed.initialize``, which starts the coordination service on
process 0, connects every process to it, and (on CPU) wires up gloo
collectives. There is no lbt launcher: the processes are started by ``srun``,
by ``gcloud ... ssh --worker=all``, by a Kubernetes JobSet, or by
``launch/local.sh``.

Precedence (first match wins, per field for the first two):

1. explicit arguments (the ``lbt train --coordinator_address/--num_processes/
   --process_id`` flags)                                  -> source ``"flags"``
2. ``LBT_COORDINATOR_ADDRESS`` / ``LBT_NUM_PROCESSES`` / ``LBT_PROCESS_ID``
                                                           -> source ``"env"``
   (in a Kubernetes indexed Job, ``JOB_COMPLETION_INDEX`` stands in for a
   missing ``LBT_PROCESS_ID``                              -> source ``"k8s"``)
3. ``LBT_CLUSTER=slurm|tpu|k8s|single`` forces one of the cases below; ``tpu``
   and ``k8s`` leave everything to JAX's own detection (GCE TPU VM metadata
   server, Kubernetes API).
4. SLURM, when ``SLURM_NTASKS > 1`` (inside an ``srun`` step) -> ``"slurm"``
5. TPU worker env (``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES`` with
   more than one host, as set on GKE TPU node pools)        -> ``"tpu"``
6. otherwise one process                                   -> ``"single"``

For ``slurm``/``tpu``/``k8s`` the coordinator address is left to JAX's cluster
detection (``jax._src.clusters``), which derives it from the node list (SLURM:
first node of ``SLURM_STEP_NODELIST``, port from the job id or
``JAX_COORDINATOR_PORT``), the TPU worker list (port 8482) or the JobSet
headless service (port 55527).

Failure behaviour (jax 0.10): every client sends heartbeats to the coordination
service on process 0. A process that stops heartbeating for
``heartbeat_timeout_s`` is declared dead; the service then tells every other
process, whose client aborts the process with an error naming the dead task
(so a killed peer makes the others exit non-zero instead of hanging). If
process 0 itself dies, the other clients notice that their heartbeats fail
and abort after the same timeout. Collectives in flight may fail sooner (gloo
sees the closed socket). ``initialization_timeout_s`` bounds how long
``initialize`` waits for all processes to connect.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence

from lbt.errors import ConfigError

logger = logging.getLogger(__name__)

SOURCES = ("flags", "env", "slurm", "tpu", "k8s", "single")

_ENV_COORD = "LBT_COORDINATOR_ADDRESS"
_ENV_NPROC = "LBT_NUM_PROCESSES"
_ENV_PID = "LBT_PROCESS_ID"
_ENV_CLUSTER = "LBT_CLUSTER"


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process takes part in a (possibly multi-process) run.

    ``None`` for a field means "let JAX's cluster detection fill it in" (only
    for ``source`` in slurm/tpu/k8s). ``local_device_ids``: ``None`` keeps
    JAX's default, ``()`` makes every local accelerator visible to this
    process, a tuple restricts the process to those device ids.
    """

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    source: str
    local_device_ids: tuple[int, ...] | None = None

    @property
    def is_multiprocess(self) -> bool:
        return self.source != "single"


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


def _explicit_spec(coord, nproc, pid, source: str, origins: dict[str, str]) -> ClusterSpec:
    """Validates an explicitly given (flags/env/k8s) triple."""
    if nproc is None:
        raise ConfigError(
            "num_processes",
            f"{origins['coordinator_address'] if coord is not None else origins['process_id']} "
            f"is set but the number of processes is not; set --num_processes "
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
        if coord is not None:
            _check_address(coord, origins["coordinator_address"])
        return ClusterSpec(None, 1, 0, "single")
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
    return ClusterSpec(coord, nproc, pid, source)


def _slurm_spec(env: Mapping[str, str], forced: bool) -> ClusterSpec | None:
    ntasks_raw = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if ntasks_raw is None:
        if forced:
            raise ConfigError(
                "num_processes",
                f"{_ENV_CLUSTER}=slurm but SLURM_NTASKS is not set; run inside an "
                "sbatch/salloc allocation and start every process with srun",
            )
        return None
    ntasks = _parse_int("num_processes", ntasks_raw, "SLURM_NTASKS", "launch with srun so SLURM sets it")
    if ntasks <= 1 and not forced:
        return None
    missing = [v for v in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST") if v not in env]
    if missing:
        raise ConfigError(
            "num_processes",
            f"SLURM_NTASKS={ntasks} but {', '.join(missing)} not set: this process was not "
            "started by srun; start every process with `srun lbt train ...` (see "
            "launch/slurm.sbatch), or set LBT_CLUSTER=single to train in one process",
        )
    pid = _parse_int("process_id", env["SLURM_PROCID"], "SLURM_PROCID", "launch with srun")
    if not 0 <= pid < ntasks:
        raise ConfigError("process_id", f"SLURM_PROCID={pid} is outside 0..{ntasks - 1}")
    # JAX restricts each SLURM task to the single device SLURM_LOCALID (one
    # process per GPU). With one task per node we want every GPU of the node.
    local_ids = None
    nnodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
    if nnodes is not None and nnodes.strip().isdigit() and int(nnodes) == ntasks:
        local_ids = ()
    if ntasks == 1:
        return ClusterSpec(None, 1, 0, "single")
    return ClusterSpec(None, ntasks, pid, "slurm", local_ids)


def _tpu_spec(env: Mapping[str, str], forced: bool) -> ClusterSpec | None:
    hosts_raw = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
    if hosts_raw is None:
        if forced:  # GCE TPU VM: the worker list lives in the metadata server.
            return ClusterSpec(None, None, None, "tpu")
        return None
    hosts = [h for h in hosts_raw.split(",") if h.strip()]
    nslices = _parse_int(
        "num_processes",
        env.get("MEGASCALE_NUM_SLICES", "1") or "1",
        "MEGASCALE_NUM_SLICES",
        "it is set by the TPU runtime",
    )
    if len(hosts) * nslices <= 1 and not forced:
        return None
    if "TPU_WORKER_ID" not in env:
        raise ConfigError(
            "process_id",
            "TPU_WORKER_HOSTNAMES lists several hosts but TPU_WORKER_ID is not set; set it "
            "to this host's index in that list (GKE sets it for TPU node pools)",
        )
    wid = _parse_int(
        "process_id", env["TPU_WORKER_ID"], "TPU_WORKER_ID", "set it to this host's index in TPU_WORKER_HOSTNAMES"
    )
    slice_id = _parse_int(
        "process_id", env.get("MEGASCALE_SLICE_ID", "0") or "0", "MEGASCALE_SLICE_ID", "it is set by the TPU runtime"
    )
    if not 0 <= wid < len(hosts):
        raise ConfigError(
            "process_id", f"TPU_WORKER_ID={wid} is outside 0..{len(hosts) - 1} (the hosts in TPU_WORKER_HOSTNAMES)"
        )
    nproc = len(hosts) * nslices
    if nproc == 1:
        return ClusterSpec(None, 1, 0, "single")
    return ClusterSpec(None, nproc, wid + slice_id * len(hosts), "tpu")


def detect_cluster(
    env: Mapping[str, str],
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ClusterSpec:
    """Works out this process's place in the run. Pure: reads only ``env``.

    Raises ``ConfigError`` for partial or inconsistent settings.
    """
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    env_vals = {
        "coordinator_address": env.get(_ENV_COORD) or None,
        "num_processes": env.get(_ENV_NPROC) or None,
        "process_id": env.get(_ENV_PID) or None,
    }
    env_names = {"coordinator_address": _ENV_COORD, "num_processes": _ENV_NPROC, "process_id": _ENV_PID}
    if any(v is not None for v in given.values()) or any(v is not None for v in env_vals.values()):
        merged, origins = {}, {}
        for k in given:
            if given[k] is not None:
                merged[k], origins[k] = given[k], f"--{k}"
            else:
                merged[k], origins[k] = env_vals[k], env_names[k]
        source = "flags" if any(v is not None for v in given.values()) else "env"
        if merged["process_id"] is None and env.get("JOB_COMPLETION_INDEX"):
            merged["process_id"] = env["JOB_COMPLETION_INDEX"]
            origins["process_id"] = "JOB_COMPLETION_INDEX"
            source = "k8s" if source == "env" else source
        return _explicit_spec(
            merged["coordinator_address"], merged["num_processes"], merged["process_id"], source, origins
        )

    forced = (env.get(_ENV_CLUSTER) or "").strip().lower()
    if forced:
        if forced == "single":
            return ClusterSpec(None, 1, 0, "single")
        if forced == "slurm":
            return _slurm_spec(env, forced=True)  # type: ignore[return-value]
        if forced == "tpu":
            return _tpu_spec(env, forced=True)  # type: ignore[return-value]
        if forced == "k8s":
            return ClusterSpec(None, None, None, "k8s")
        raise ConfigError(
            "cluster",
            f"{_ENV_CLUSTER}={env[_ENV_CLUSTER]!r} is not one of slurm, tpu, k8s, single; unset it to auto-detect",
        )

    spec = _slurm_spec(env, forced=False)
    if spec is not None:
        return spec
    spec = _tpu_spec(env, forced=False)
    if spec is not None:
        return spec
    return ClusterSpec(None, 1, 0, "single")


# Values of jax.distributed.initialize(cluster_detection_method=...) per source.
# None = JAX tries every built-in environment (OMPI, SLURM, GKE TPU, GCE TPU, k8s).
_DETECTION_METHOD = {"slurm": "slurm", "tpu": None, "k8s": None}


def initialize(
    spec: ClusterSpec,
    *,
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 60,
    shutdown_timeout_s: int = 300,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Starts JAX's multi-controller runtime for ``spec``. No-op for ``"single"``.

    Must run before anything touches a JAX backend (``jax.devices()``, any
    computation). ``heartbeat_timeout_s``: a process silent this long is
    declared dead and every other process aborts with an error.
    ``initialization_timeout_s``: how long to wait for all processes to connect.
    ``shutdown_timeout_s``: how long a finishing process waits for the others
    at exit.
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
        # An empty list keeps JAX's auto-detection for the other fields but stops
        # it from restricting the process to one device (SLURM, 1 task per node).
        local_device_ids = list(spec.local_device_ids)
    kwargs = dict(
        coordinator_address=spec.coordinator_address,
        num_processes=spec.num_processes,
        process_id=spec.process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=int(initialization_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s),
        shutdown_timeout_seconds=int(shutdown_timeout_s),
    )
    if spec.source in ("flags", "env") or (spec.source == "k8s" and spec.num_processes):
        # Everything is explicit: skip JAX's environment probing (which would,
        # e.g., query the GCE metadata server or restrict devices under SLURM).
        kwargs["cluster_detection_method"] = "deactivate"
    else:
        kwargs["cluster_detection_method"] = _DETECTION_METHOD[spec.source]
    logger.info(
        "initialising jax.distributed (source=%s, coordinator=%s, num_processes=%s, "
        "process_id=%s, heartbeat_timeout=%ss, initialization_timeout=%ss)",
        spec.source,
        spec.coordinator_address or "<auto>",
        spec.num_processes or "<auto>",
        spec.process_id if spec.process_id is not None else "<auto>",
        heartbeat_timeout_s,
        initialization_timeout_s,
    )
    jax.distributed.initialize(**kwargs)


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
