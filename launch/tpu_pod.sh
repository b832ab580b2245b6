#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every worker; jax.distributed
# detects the pod (TPU_WORKER_HOSTNAMES) and joins the workers.
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a WORKDIR=gs://my-bucket/motion \
#   CONFIG=configs/motion.py:paper bash launch/tpu_pod.sh [--config.data.data_dir=gs://my-bucket/tfds]
#
# The repository must be at ~/vasa_jax on every worker (e.g. `gcloud compute tpus tpu-vm scp
# --recurse . $TPU_NAME:~/vasa_jax --worker=all`), with `pip install -e .` run there once.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
CONFIG=${CONFIG:-configs/motion.py:paper}
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/vasa_jax && python3 launch/train.py --config=$CONFIG --workdir=$WORKDIR $*"
