#!/usr/bin/env bash
# Several nodes without SLURM: DeepSpeed's launcher reads a hostfile, starts the ranks on every host over ssh
# (pdsh) and exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which the trainer reads.
# Only the launcher is DeepSpeed's; training is taidtron's megatron-core path.
#
#     launch/deepspeed.sh CONFIG [section.key=value ...]
#     HOSTFILE=hostfile MASTER_ADDR=10.0.0.1 launch/deepspeed.sh configs/qwen2_72b_instruct_to_1.5b_instruct.yaml
#
# hostfile: one line per node, `<hostname> slots=<GPUs>`, the first line is the head node (rank 0, rendezvous):
#     gpu-node-01 slots=8
#     gpu-node-02 slots=8
# Needs: pdsh on this host; passwordless ssh from this host to every node (as `ssh <hostname>` from the hostfile,
# so keys and options come from ~/.ssh/config, or PDSH_SSH_ARGS_APPEND for pdsh); the repository and the venv at
# the same path on every node (each node `cd`s to this directory and runs this launcher's Python). Environment
# variables reach the remote ranks only through a `.deepspeed_env` file (VAR=value lines) in this directory or
# $HOME, or the file DS_ENV_FILE names: put NCCL_* / GLOO_SOCKET_IFNAME settings there.
# Environment: HOSTFILE (default ./hostfile), MASTER_PORT (default 29500), MASTER_ADDR (default: the first IP that
# `ssh <first host> hostname -I` prints; set it to pick the fast network), PYTHON (default: <repo>/.venv/bin/python
# when it exists, else python3), TAIDTRON_MODULE (taidtron.train, the default, or taidtron.cache_teacher: the
# ranks write a teacher cache, its --out DIR --top-k K after CONFIG), DS_LAUNCHER_ARGS (extra launcher flags, e.g. "--include host1:0-3", or
# "--no_ssh_check" when `ssh <first host>` alone cannot log in but pdsh can), DRY_RUN=1 (print the launcher
# command instead of running it).
# Preemption: send SIGUSR1 to the trainer processes on every node (not to the launcher, which kills its children);
# they save a checkpoint and exit 75; run the same command again to resume.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/launch/common.sh"
launch_parse_args "$0" "$@"
launch_find_python "$REPO"
launch_module "$0"
HOSTFILE="${HOSTFILE:-hostfile}"
[ -f "$HOSTFILE" ] || { echo "deepspeed.sh: no hostfile at $HOSTFILE: write one (see --help) or set HOSTFILE=..." >&2; exit 2; }
export PYTHONUNBUFFERED=1
# --no_local_rank: the trainer takes rank from the environment; a `--local_rank=N` argument would be read as an
# override and rejected.
addr=()
[ -n "${MASTER_ADDR:-}" ] && addr=(--master_addr="$MASTER_ADDR")
# shellcheck disable=SC2206  # DS_LAUNCHER_ARGS is a list of flags
extra=(${DS_LAUNCHER_ARGS:-})
cmd=("$PYTHON" -m deepspeed.launcher.runner --hostfile="$HOSTFILE" --master_port="${MASTER_PORT:-29500}"
     "${addr[@]}" "${extra[@]}" --no_local_rank --module "$MODULE" --config "$CONFIG" "${OVERRIDES[@]}")
launch_dry_run "${cmd[@]}"
exec "${cmd[@]}"
