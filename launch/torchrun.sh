#!/usr/bin/env bash
# One node: torchrun starts NPROC ranks and exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*, which the trainer
# reads. GPUs use NCCL; without GPUs the ranks are CPU processes on gloo.
#
#     launch/torchrun.sh configs/smoke.yaml                               # one rank per GPU (1 on a CPU machine)
#     NPROC=2 launch/torchrun.sh configs/smoke.yaml optim.train_steps=20   # trailing args: section.key=value overrides
#
# Environment: NPROC (default: the number of visible GPUs, else 1), PYTHON (default `python`), MASTER_PORT (a free
# port is picked by --standalone otherwise).
# Preemption: `kill -USR1 <torchrun pid>` (or SIGTERM) is forwarded to every rank; the trainer finishes its step,
# saves a checkpoint and exits 75. torchrun itself then exits non-zero (it reports any non-zero worker exit as a
# failure); run the same command again to resume from the checkpoint. On SLURM use launch/slurm/ instead.
set -euo pipefail
if [ "$#" -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit $(( $# < 1 ? 2 : 0 ))
fi
CONFIG="$1"; shift
PYTHON="${PYTHON:-python}"
NPROC="${NPROC:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')}"
# Forward SIGUSR1 too (torchrun handles TERM/INT/HUP/QUIT only by default) and give the ranks time to save before
# torchrun escalates to SIGKILL (its default is 30 s). These are the environment forms of torchrun's
# --signals-to-handle / --shutdown-timeout (torch >= 2.8), so older torchruns just ignore them.
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}"
export PYTHONUNBUFFERED=1
if [ -z "${OMP_NUM_THREADS:-}" ]; then   # split the cores between the ranks instead of oversubscribing them
    OMP_NUM_THREADS=$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 )); export OMP_NUM_THREADS
fi
port=()
[ -n "${MASTER_PORT:-}" ] && port=(--master-port="$MASTER_PORT")
exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NPROC" "${port[@]}" \
    -m taidtron.train --config "$CONFIG" "$@"
