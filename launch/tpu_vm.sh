#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single- or multi-host, e.g. v4-32, v5litepod-64).
# Runs the same `lbt train` on every worker of the slice via
# `gcloud compute tpus tpu-vm ssh --worker=all`. lbt sees the TPU chips of a TPU VM (and is
# told LBT_CLUSTER=tpu besides), and jax.distributed.initialize() finds the slice's workers
# through the GCE metadata server. Workers get Python 3.12 (uv) and lbt[tpu,jpeg] (jax[tpu], the fast JPEG decoder).
#
# Usage:
#   TPU_NAME=lbt-v4-32 ZONE=us-central2-b CONFIG=configs/imagenet_resnet50_goyal8k.py \
#   GCS_BUCKET=my-bucket WORKDIR=/gcs/my-bucket/runs/r50 launch/tpu_vm.sh \
#     --config.dataset.data_dir=/gcs/my-bucket/tensorflow_datasets [extra lbt train flags]
#
#   # create a v5e slice first, install lbt from git, and run detached:
#   CREATE=1 ACCELERATOR_TYPE=v5litepod-16 LBT_GIT_URL=https://github.com/me/lbt.git LBT_GIT_REF=main \
#   DETACH=1 TPU_NAME=... ZONE=... CONFIG=... GCS_BUCKET=my-bucket WORKDIR=/gcs/my-bucket/runs/x \
#   launch/tpu_vm.sh --config.dataset.data_dir=/gcs/my-bucket/tensorflow_datasets
#
# The data: a tfds data_dir with the prepared array_record dataset (docs/data.md) that every
# worker reads, e.g. in the same bucket: --config.dataset.data_dir=/gcs/$GCS_BUCKET/tensorflow_datasets
# (or a gs:// URL, read through tfds). The embedded digits default needs no data.
#
# Variables:
#   TPU_NAME          (required) TPU VM name
#   ZONE              (required) zone of the TPU VM
#   CONFIG            (required) config file, relative to the lbt checkout (copied or cloned)
#   WORKDIR           (required) run directory, a path every worker and later runs see
#                     (auto-resume): /gcs/$GCS_BUCKET/... or an NFS (Filestore) mount.
#                     A local path is per-worker. A gs://bucket/path URL works too
#                     (docs/checkpointing.md).
#   GCS_BUCKET        mount this bucket with Cloud Storage FUSE at /gcs/$GCS_BUCKET on every
#                     worker (installs gcsfuse from Google's apt repository if missing)
#   PROJECT           gcloud project (default: gcloud's configured project)
#   CREATE=1          create the TPU VM first, with
#     ACCELERATOR_TYPE  e.g. v4-32, v5litepod-16 (required with CREATE=1)
#     RUNTIME_VERSION   TPU software version (default: chosen from ACCELERATOR_TYPE, per Google's
#                       "TPU software versions" page: v2/v3/v4 tpu-ubuntu2204-base,
#                       v5e (v5litepod) v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
#     SPOT=1            create a Spot TPU (preemptible; lbt checkpoints on SIGTERM)
#   INSTALL=0         skip installing (default 1: install/update lbt on every worker)
#   LBT_GIT_URL       install lbt from this git URL (pip install git+URL@REF) ...
#   LBT_GIT_REF       ... at this branch/tag/commit (default main)
#                     Without LBT_GIT_URL the current checkout (git HEAD) is copied.
#   PYTHON_VERSION    Python of the workers' venv (default 3.12; lbt, jax, flax, orbax and grain
#                     need >= 3.11, the image's python3 is 3.10): installed with uv
#   JAX_SPEC          extra pip requirement for JAX, e.g. "jax[tpu]==0.10.2" (default: none;
#                     lbt is installed with its [tpu] extra, which pulls jax[tpu])
#   DETACH=1          start training in the background on every worker (nohup), log to
#                     ~/lbt-train.log there, and return; default: stream all workers' output.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${CONFIG:?set CONFIG=configs/<recipe>.py}"
: "${WORKDIR:?set WORKDIR (a shared path, e.g. /gcs/$GCS_BUCKET/runs/x)}"

GCLOUD_FLAGS=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then GCLOUD_FLAGS+=(--project="$PROJECT"); fi
# Paths on the workers: $HOME is expanded there, by the remote shell.
# shellcheck disable=SC2016
{
  REMOTE_DIR='$HOME/lbt'
  VENV='$HOME/lbt-venv'
  UV='$HOME/.local/bin/uv' # where uv's installer puts it
}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}

runtime_for() {  # the TPU software version of an accelerator type (Google's "TPU software versions")
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

tpu_ssh() {  # run a command on every worker of the slice
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

if [[ ${CREATE:-0} == 1 ]]; then
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE (e.g. v4-32) to create the TPU VM}"
  if [[ -z ${RUNTIME_VERSION:-} ]] && ! RUNTIME_VERSION=$(runtime_for "$ACCELERATOR_TYPE"); then
    echo "$0: no default TPU software version for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION" \
      "(see Google's \"TPU software versions\" page)" >&2
    exit 2
  fi
  CREATE_FLAGS=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ ${SPOT:-0} == 1 ]]; then CREATE_FLAGS+=(--spot); fi
  gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" "${CREATE_FLAGS[@]}"
fi

if [[ ${INSTALL:-1} == 1 ]]; then
  if [[ -n ${LBT_GIT_URL:-} ]]; then
    REF=${LBT_GIT_REF:-main}
    tpu_ssh "set -e; rm -rf $REMOTE_DIR && git clone --quiet '$LBT_GIT_URL' $REMOTE_DIR && git -C $REMOTE_DIR checkout --quiet '$REF'"
  else
    # Copy this checkout's committed HEAD to every worker.
    TARBALL=$(mktemp -d)/lbt.tar.gz
    git -C "$(dirname "$0")/.." archive --format=tar.gz --prefix=lbt/ -o "$TARBALL" HEAD
    gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME":lbt.tar.gz "${GCLOUD_FLAGS[@]}" --worker=all
    tpu_ssh "set -e; rm -rf $REMOTE_DIR && tar -xzf lbt.tar.gz -C ~"
  fi
  # The image's python3 is 3.10: uv installs Python $PYTHON_VERSION (a standalone build) into the venv.
  EXTRA_REQ=""
  if [[ -n ${JAX_SPEC:-} ]]; then EXTRA_REQ=$(printf ' %q' "$JAX_SPEC"); fi
  tpu_ssh "set -e; if [ ! -x $UV ]; then curl -LsSf https://astral.sh/uv/install.sh | sh; fi; \
    $UV venv --quiet --allow-existing --python $PYTHON_VERSION $VENV \
    && $UV pip install --quiet --python $VENV/bin/python -e \"${REMOTE_DIR}[tpu,jpeg]\"$EXTRA_REQ"
fi

if [[ -n ${GCS_BUCKET:-} ]]; then
  # Cloud Storage FUSE: the bucket appears as a POSIX directory on every worker.
  tpu_ssh "set -e; if ! command -v gcsfuse >/dev/null; then \
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
    echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" \
      | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi; \
    sudo mkdir -p /gcs/$GCS_BUCKET && sudo chown \$(id -u):\$(id -g) /gcs/$GCS_BUCKET; \
    mountpoint -q /gcs/$GCS_BUCKET || gcsfuse --implicit-dirs $GCS_BUCKET /gcs/$GCS_BUCKET"
fi

# Quote the user's extra flags for the remote shell.
EXTRA=""
for a in "$@"; do EXTRA+=" $(printf '%q' "$a")"; done
TRAIN="cd $REMOTE_DIR && . $VENV/bin/activate && LBT_CLUSTER=tpu PYTHONUNBUFFERED=1 \
lbt train --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")$EXTRA"

if [[ ${DETACH:-0} == 1 ]]; then
  tpu_ssh "nohup setsid bash -c $(printf '%q' "$TRAIN") > ~/lbt-train.log 2>&1 < /dev/null &"
  echo "started on all workers of $TPU_NAME; follow with:" >&2
  echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f ~/lbt-train.log'" >&2
else
  tpu_ssh "$TRAIN"
fi
