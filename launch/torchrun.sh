#!/usr/bin/env bash
# torchrun on one node or several: NPROC ranks per node; torchrun exports RANK / WORLD_SIZE / LOCAL_RANK /
# MASTER_*, which the trainer reads. GPUs use NCCL; without GPUs the ranks are CPU processes on gloo.
#
#     launch/torchrun.sh CONFIG [section.key=value ...]
#     launch/torchrun.sh configs/smoke.yaml                                # one rank per GPU (1 on a CPU machine)
#     NPROC=2 launch/torchrun.sh configs/smoke.yaml optim.train_steps=20   # trailing args: config overrides
#     TAIDTRON_MODULE=taidtron.cache_teacher launch/torchrun.sh configs/smoke.yaml --out DIR --top-k 32
#                                              # the ranks write a teacher cache instead (docs/teacher_cache.md)
#
# Several nodes: run the same command on every node, with NNODES, MASTER_ADDR and a NODE_RANK per node:
#     node-a$ NNODES=2 NODE_RANK=0 MASTER_ADDR=node-a launch/torchrun.sh configs/qwen2_7b_to_1.5b.yaml
#     node-b$ NNODES=2 NODE_RANK=1 MASTER_ADDR=node-a launch/torchrun.sh configs/qwen2_7b_to_1.5b.yaml
# The nodes meet at torchrun's c10d rendezvous store, which the NODE_RANK=0 node hosts on MASTER_ADDR:MASTER_PORT.
# torchrun then numbers the nodes itself (sorted by host name), each node holding consecutive ranks; NODE_RANK
# only says who hosts the store. Every node's host name must resolve, on the other nodes, to an address they can
# reach; docs/cluster.md ("Several nodes") lists what to check when ranks cannot meet.
#
# Environment: NPROC (ranks per node; default: the number of visible GPUs, else 1), NNODES (default 1),
# NODE_RANK and MASTER_ADDR (required when NNODES > 1), MASTER_PORT (default 29500 with several nodes; one node
# picks a free port), PYTHON (default: <repo>/.venv/bin/python when it exists, else python3), TAIDTRON_MODULE
# (taidtron.train, the default, or taidtron.cache_teacher), DRY_RUN=1 (print the torchrun command instead of
# running it).
# Exit code: the ranks' own (torchrun itself, run through `python -m taidtron.torchrun`): 0 done; 2 bad input, the
# one line printed once; 75 after a preemption save; else the code of the rank that failed first.
# Preemption: Ctrl-C, or `kill -USR1 <pid>` (or SIGTERM) of this script, is forwarded to every rank of that node;
# the trainer finishes its step, saves a checkpoint and exits 75 (with several nodes, signal every node's torchrun:
# the ranks agree on the step, so all of them stop there), and so does this script; run the same command again to
# resume from the checkpoint. On SLURM use launch/slurm/ instead.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$REPO/launch/common.sh"
launch_parse_args "$0" "$@"
launch_find_python "$REPO"
launch_module "$0"
NNODES="${NNODES:-1}"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || { echo "torchrun.sh: NNODES must be a positive integer, got '$NNODES'" >&2; exit 2; }
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

if [ "$NNODES" -eq 1 ]; then
    nodes=(--standalone --nnodes=1)
    [ -n "${MASTER_PORT:-}" ] && nodes+=(--master-port="$MASTER_PORT")
else
    [ -n "${MASTER_ADDR:-}" ] && [[ "${NODE_RANK:-}" =~ ^[0-9]+$ ]] && [ "${NODE_RANK:-0}" -lt "$NNODES" ] || {
        echo "torchrun.sh: NNODES=$NNODES needs MASTER_ADDR (the NODE_RANK=0 node's address) and NODE_RANK" \
             "(0..$((NNODES - 1)), 0 on that node); got MASTER_ADDR='${MASTER_ADDR:-}' NODE_RANK='${NODE_RANK:-}'" >&2
        exit 2
    }
    # is_host: the NODE_RANK=0 node hosts the store. torchrun's own guess compares MASTER_ADDR with this host's
    # names and addresses, which fails when the host name does not resolve locally.
    nodes=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}"
           --rdzv-id=taidtron --rdzv-conf="is_host=$([ "$NODE_RANK" -eq 0 ] && echo true || echo false)")
fi
cmd=("$PYTHON" -m taidtron.torchrun "${nodes[@]}" --nproc-per-node="$NPROC"
     -m "$MODULE" --config "$CONFIG" "${OVERRIDES[@]}")
launch_dry_run "${cmd[@]}"
exec "${cmd[@]}"
