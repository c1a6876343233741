#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single- or multi-host, e.g. v4-32, v5litepod-64).
# Runs the same `lbt train` on every worker of the slice via
# `gcloud compute tpus tpu-vm ssh --worker=all`; lbt is told LBT_CLUSTER=tpu and
# jax.distributed.initialize() finds the workers through the TPU metadata server.
#
# Usage:
#   TPU_NAME=lbt-v4-32 ZONE=us-central2-b CONFIG=configs/imagenet_resnet50_goyal8k.py \
#   GCS_BUCKET=my-bucket WORKDIR=/gcs/my-bucket/runs/r50 launch/tpu_vm.sh [extra lbt train flags]
#
#   # create the slice first, install lbt from git, and run detached:
#   CREATE=1 ACCELERATOR_TYPE=v4-32 LBT_GIT_URL=https://github.com/me/lbt.git LBT_GIT_REF=main \
#   DETACH=1 TPU_NAME=... ZONE=... CONFIG=... GCS_BUCKET=... WORKDIR=/gcs/... launch/tpu_vm.sh
#
# Variables:
#   TPU_NAME          (required) TPU VM name
#   ZONE              (required) zone of the TPU VM
#   CONFIG            (required) config file, relative to the lbt checkout (copied or cloned)
#   WORKDIR           (required) run directory, a path every worker and later runs see
#                     (auto-resume): /gcs/$GCS_BUCKET/... or an NFS (Filestore) mount.
#                     A local path is per-worker. gs:// URLs are not accepted by lbt.
#   GCS_BUCKET        mount this bucket with Cloud Storage FUSE at /gcs/$GCS_BUCKET on every
#                     worker (installs gcsfuse from Google's apt repository if missing)
#   PROJECT           gcloud project (default: gcloud's configured project)
#   CREATE=1          create the TPU VM first, with
#     ACCELERATOR_TYPE  e.g. v4-32, v5litepod-16 (required with CREATE=1)
#     RUNTIME_VERSION   TPU software version (default tpu-ubuntu2204-base)
#     SPOT=1            create a Spot TPU (preemptible; lbt checkpoints on SIGTERM)
#   INSTALL=0         skip installing (default 1: install/update lbt on every worker)
#   LBT_GIT_URL       install lbt from this git URL (pip install git+URL@REF) ...
#   LBT_GIT_REF       ... at this branch/tag/commit (default main)
#                     Without LBT_GIT_URL the current checkout (git HEAD) is copied.
#   JAX_SPEC          pip requirement for JAX on TPU (default "jax[tpu]")
#   DETACH=1          start training in the background on every worker (nohup), log to
#                     ~/lbt-train.log there, and return; default: stream all workers' output.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${CONFIG:?set CONFIG=configs/<recipe>.py}"
: "${WORKDIR:?set WORKDIR (a shared path, e.g. /gcs/$GCS_BUCKET/runs/x)}"

GCLOUD_FLAGS=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then GCLOUD_FLAGS+=(--project="$PROJECT"); fi
REMOTE_DIR='~/lbt'
VENV='~/lbt-venv'

tpu_ssh() {  # run a command on every worker of the slice
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all --command="$1"
}

if [[ ${CREATE:-0} == 1 ]]; then
  : "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE (e.g. v4-32) to create the TPU VM}"
  CREATE_FLAGS=(--accelerator-type="$ACCELERATOR_TYPE" --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}")
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
  tpu_ssh "set -e; python3 -m venv $VENV && . $VENV/bin/activate && pip install -q -U pip \
    && pip install -q '${JAX_SPEC:-jax[tpu]}' && pip install -q -e $REMOTE_DIR"
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
