#!/usr/bin/env bash
# Several nodes without SLURM: DeepSpeed's launcher reads a hostfile, starts the ranks on every host over ssh
# (pdsh) and exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which the trainer reads.
# Only the launcher is DeepSpeed's; training is taidtron's megatron-core path.
#
#     HOSTFILE=hostfile launch/deepspeed.sh configs/qwen2_72b_instruct_to_1.5b_instruct.yaml [overrides...]
#
# hostfile: one line per node, `<hostname> slots=<GPUs>`, the first line is the head node (rank 0, rendezvous):
#     gpu-node-01 slots=8
#     gpu-node-02 slots=8
# Needs: passwordless ssh from this host to every node, pdsh, the repository and the venv at the same path on
# every node (the launcher `cd`s to this directory there). Environment variables reach the remote ranks only
# through a `.deepspeed_env` file (VAR=value lines) in this directory or $HOME: put NCCL_* settings there.
# Environment: HOSTFILE (default ./hostfile), MASTER_PORT (default 29500), MASTER_ADDR (default: the first IP that
# `ssh <first host> hostname -I` prints; set it to pick the fast network), PYTHON (default `python`),
# DS_LAUNCHER_ARGS (extra launcher flags, e.g. "--launcher openmpi", "--include host1:0-3", or "--no_ssh_check"
# for a one-host hostfile on a machine without ssh to itself).
# Preemption: send SIGUSR1 to the trainer processes on every node (not to the launcher, which kills its children);
# they save a checkpoint and exit 75; run the same command again to resume.
set -euo pipefail
if [ "$#" -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit $(( $# < 1 ? 2 : 0 ))
fi
CONFIG="$1"; shift
HOSTFILE="${HOSTFILE:-hostfile}"
[ -f "$HOSTFILE" ] || { echo "no hostfile at $HOSTFILE: write one (see --help) or set HOSTFILE=..." >&2; exit 2; }
export PYTHONUNBUFFERED=1
# --no_local_rank: the trainer takes rank from the environment; a `--local_rank=N` argument would be read as an
# override and rejected.
addr=()
[ -n "${MASTER_ADDR:-}" ] && addr=(--master_addr="$MASTER_ADDR")
# shellcheck disable=SC2086  # DS_LAUNCHER_ARGS is a list of flags
exec "${PYTHON:-python}" -m deepspeed.launcher.runner --hostfile="$HOSTFILE" --master_port="${MASTER_PORT:-29500}" \
    "${addr[@]}" ${DS_LAUNCHER_ARGS:-} --no_local_rank --module taidtron.train --config "$CONFIG" "$@"
