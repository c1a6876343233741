"""launch/: shell syntax, the JobSet manifest, and local.sh run for real."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import string
import subprocess
import sys

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
    CONFIG="configs/x.py",
    BUCKET="my-bucket",
    WORKDIR="/gcs/run",
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
