#!/usr/bin/env bash
# `make slurm-test`: start a real, throw-away SLURM cluster on this machine (munged + slurmctld + slurmd, no systemd,
# no cgroups, no accounting) and run the project's launch/slurm/smoke.sbatch through it:
#   (a) smoke:      sbatch --wait; the job is COMPLETED, a checkpoint and metrics.jsonl exist, one row per step;
#   (b) preemption: a longer smoke job is sent SIGUSR1 (`scancel --signal=USR1`, which reaches the srun tasks, as
#                   `#SBATCH --signal=USR1@<s>` does near the time limit); the trainer checkpoints the step it reached
#                   and exits 75; the batch script requeues the job; the requeued job resumes at the next step and
#                   completes.
# All state (slurm.conf, munge key and socket, spool, logs, run directories) lives in one temp dir; every daemon it
# starts is stopped by pid on exit. Needs root (to install the packages when missing and to run munged as `munge`).
#
#   tests/slurm/run_slurm_test.sh [--keep]     --keep: leave the temp dir for inspection (its path is printed)
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
KEEP=0
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --keep) KEEP=1 ;;
        *) echo "unknown argument $arg; see --help" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
SMOKE_STEPS="${SMOKE_STEPS:-4}"           # test (a): optimizer steps, checkpoint every 2
PREEMPT_STEPS="${PREEMPT_STEPS:-60}"      # test (b): long enough that the signal lands mid-run
PREEMPT_AFTER="${PREEMPT_AFTER:-3}"       # test (b): signal once this many steps are logged
T0=$SECONDS

say()  { echo "[slurm-test $((SECONDS - T0))s] $*"; }
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; dump_logs; exit 1; }

[ "$(id -u)" -eq 0 ] || { echo "FAIL: run as root (installs packages, starts munged as user munge)"; exit 1; }
[ -x "$PYTHON" ] || { echo "FAIL: $PYTHON not found; run \`make install\` first or set PYTHON=/path/to/python"; exit 1; }

# ---------------------------------------------------------------------------------------------------------------
# Install (only what is missing; ~8 packages, ~10 s).

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi
id munge >/dev/null 2>&1 || fail "user munge does not exist; reinstall the munge package"

# ---------------------------------------------------------------------------------------------------------------
# Cluster start/stop. Daemons run in the foreground (-F / -D) in the background of this shell, so $! is their pid.

T="$(mktemp -d /tmp/taidtron-slurm.XXXXXX)"
chmod 755 "$T"                          # munged (user munge) must traverse it to reach its own subdirectory
mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/log" "$T/jobs" "$T/runs"
export SLURM_CONF="$T/slurm.conf"       # every client command (sbatch, squeue, scontrol, ...) reads this one
PIDS=()
SUBMITTED=()

dump_logs() {
    echo "---- logs under $T (kept) ----"
    KEEP=1
    for f in "$T"/log/*.log "$T"/jobs/*; do
        [ -f "$f" ] && { echo "==== $f (last 60 lines)"; tail -n 60 "$f"; }
    done
    return 0
}

stop_cluster() {
    local rc=$?
    set +e
    # Cancel our jobs first so that no trainer outlives slurmd, then give slurmstepd time to reap them.
    if [ "${#SUBMITTED[@]}" -gt 0 ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        scancel "${SUBMITTED[@]}" 2>/dev/null
        for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "daemon $pid ignored SIGTERM: SIGKILL"; kill -KILL "$pid"; }
        wait "$pid" 2>/dev/null
    done
    if [ "$KEEP" -eq 1 ]; then echo "state kept in $T"; else rm -rf "$T"; fi
    echo "slurm-test: $([ "$rc" -eq 0 ] && echo PASSED || echo FAILED) in $((SECONDS - T0)) s"
    exit "$rc"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_cluster() {
    local host node_line node_name
    host="$(hostname -s)"
    # munged refuses to run as root: run it as munge with its own key, socket, pid and seed files under $T.
    chown munge: "$T/munge"
    dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
    chown munge: "$T/munge/munge.key" && chmod 600 "$T/munge/munge.key"
    setpriv --reuid=munge --regid=munge --init-groups munged -F \
        --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" --pid-file="$T/munge/munged.pid" \
        --seed-file="$T/munge/munged.seed" --log-file="$T/log/munged.log" >"$T/log/munged.out" 2>&1 &
    PIDS+=($!)

    # The node line as slurmd sees the hardware (CPUs, sockets, cores, threads, memory), so slurmctld accepts it.
    node_line="$(slurmd -C | head -n 1)"
    [[ "$node_line" == NodeName=* ]] || fail "slurmd -C printed '$node_line'"
    cat >"$SLURM_CONF" <<EOF
ClusterName=taidtron-test
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also is how long a requeued job waits before it may start again (default 120 s; we requeue once).
AuthInfo=socket=$T/munge/munge.socket,cred_expire=10
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool/slurmd-%n
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
# No cgroups on these machines: track processes through /proc and do no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
# No accounting database: job state comes from scontrol while the job record lives (MinJobAge seconds).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
# Two fake "GPUs" (empty files, see gres.conf) so that pretrain.sbatch, which sizes its job from SLURM_GPUS_ON_NODE,
# runs here too; slurm sets CUDA_VISIBLE_DEVICES for them, torch finds no CUDA and the ranks use gloo.
GresTypes=gpu
${node_line} Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmd drops file-less GPUs and wants device files: each fake GPU is a link to /dev/null (a character device,
    # the trailing digit is its index). slurmd reads gres.conf from the directory of slurm.conf.
    mkdir -p "$T/dev" && ln -s /dev/null "$T/dev/nvidia0" && ln -s /dev/null "$T/dev/nvidia1"
    echo "Name=gpu File=$T/dev/nvidia[0-1]" >"$T/gres.conf"
    for _ in $(seq 50); do [ -S "$T/munge/munge.socket" ] && break; sleep 0.1; done
    [ -S "$T/munge/munge.socket" ] || fail "munged did not create its socket (see $T/log/munged.log)"

    slurmctld -D -c -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 &   # -c: start from a clean state
    PIDS+=($!)
    node_name="${node_line#NodeName=}"
    slurmd -D -f "$SLURM_CONF" -N "${node_name%% *}" >"$T/log/slurmd.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ "$(sinfo -h -o %T 2>/dev/null | head -n 1)" = idle ] && return 0
        sleep 0.2
    done
    fail "the node never became idle: $(sinfo 2>&1)"
}

# ---------------------------------------------------------------------------------------------------------------
# Helpers.

job_field() {  # job_field JOBID Key -> value from `scontrol show job`
    scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

metric_steps() {  # metric_steps RUN_DIR -> the `step` column of metrics.jsonl, space-separated
    [ -f "$1/metrics.jsonl" ] || return 0
    python3 -c 'import json, sys; print(" ".join(str(json.loads(l)["step"]) for l in open(sys.argv[1]) if l.strip()))' \
        "$1/metrics.jsonl"
}

latest_step() {  # latest_step CKPT_DIR -> step number in the `latest` marker (iter_0000012 -> 12), or empty
    [ -f "$1/latest" ] || return 0
    local name
    name="$(tr -d '[:space:]' <"$1/latest")"
    [ -d "$1/$name" ] || fail "$1/latest names $name, which is not a directory"
    echo "$((10#${name##*_}))"
}

expect_steps() {  # expect_steps "ACTUAL" FIRST LAST -> the rows are exactly FIRST..LAST, once each
    local want
    want="$(seq -s ' ' "$2" "$3")"
    [ "$1" = "$want" ] || fail "metrics.jsonl steps are '$1', expected '$want'"
}

submit() {  # submit NAME [sbatch options...] -- [trainer overrides...] -> prints the job id
    local name="$1"; shift
    local opts=()
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    sbatch --parsable --job-name="$name" --chdir="$REPO" --output="$T/jobs/%x-%j.out" "${opts[@]}" \
        "$REPO/launch/slurm/smoke.sbatch" "$@"
}

# ---------------------------------------------------------------------------------------------------------------
say "starting munged, slurmctld, slurmd under $T"
start_cluster
pass "local SLURM cluster up: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"

# The job environment is this one (sbatch exports it): the venv's python, no GPU (gloo), no wandb network.
export PYTHON CUDA_VISIBLE_DEVICES="" WANDB_MODE=disabled
# configs/smoke.yaml with a random teacher (its pretrained one comes from `make smoke-test`; this test checks the
# launch, stop and resume path, not learning), a short warm-up, no wandb and no periodic validation.
COMMON=(teacher.init=null optim.warmup_steps=1 logging.wandb_mode=disabled logging.eval_interval=0)

# (a) smoke -----------------------------------------------------------------------------------------------------
RUN_A="$T/runs/smoke"
say "(a) smoke: sbatch --wait launch/slurm/smoke.sbatch, $SMOKE_STEPS steps"
rc=0
JOB_A="$(submit smoke --wait -- "${COMMON[@]}" optim.train_steps="$SMOKE_STEPS" checkpoint.save_interval=2 \
    logging.run_dir="$RUN_A")" || rc=$?
JOB_A="${JOB_A%%;*}"
SUBMITTED+=("$JOB_A")
state="$(job_field "$JOB_A" JobState)"
[ "$rc" -eq 0 ] && [ "$state" = COMPLETED ] || fail "(a) smoke job $JOB_A: sbatch --wait exit $rc, state $state"
pass "(a) smoke job $JOB_A COMPLETED (exit $(job_field "$JOB_A" ExitCode))"
[ -f "$RUN_A/config.yaml" ] || fail "(a) $RUN_A/config.yaml missing"
expect_steps "$(metric_steps "$RUN_A")" 1 "$SMOKE_STEPS"
pass "(a) metrics.jsonl has one row per step 1..$SMOKE_STEPS"
[ "$(latest_step "$RUN_A/checkpoints")" = "$SMOKE_STEPS" ] \
    || fail "(a) checkpoints/latest is '$(latest_step "$RUN_A/checkpoints")', expected step $SMOKE_STEPS"
pass "(a) final checkpoint $RUN_A/checkpoints/$(cat "$RUN_A/checkpoints/latest")"

# (b) preemption ------------------------------------------------------------------------------------------------
RUN_B="$T/runs/preempt"
say "(b) preemption: $PREEMPT_STEPS-step job, SIGUSR1 after $PREEMPT_AFTER logged steps"
JOB_B="$(submit preempt -- "${COMMON[@]}" optim.train_steps="$PREEMPT_STEPS" checkpoint.save_interval=0 \
    logging.run_dir="$RUN_B")"
JOB_B="${JOB_B%%;*}"
SUBMITTED+=("$JOB_B")
for _ in $(seq 600); do
    steps=($(metric_steps "$RUN_B"))
    [ "${#steps[@]}" -ge "$PREEMPT_AFTER" ] && break
    state="$(job_field "$JOB_B" JobState)"
    case "$state" in PENDING|CONFIGURING|RUNNING|"") ;; *) fail "(b) job $JOB_B is $state before it was signalled" ;; esac
    sleep 0.2
done
[ "${#steps[@]}" -ge "$PREEMPT_AFTER" ] || fail "(b) job $JOB_B logged ${#steps[@]} steps in 120 s"
# What `#SBATCH --signal=USR1@<s>` does near the time limit: the signal goes to the step's tasks (the ranks).
scancel --signal=USR1 "$JOB_B"
say "(b) sent SIGUSR1 to job $JOB_B at logged step ${steps[-1]}"

# The requeue shows as Restarts=1; the checkpoint of the step the trainer reached is then on disk.
for _ in $(seq 600); do
    [ "$(job_field "$JOB_B" Restarts)" = 1 ] && break
    state="$(job_field "$JOB_B" JobState)"
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)
        fail "(b) job $JOB_B ended $state without being requeued" ;;
    esac
    sleep 0.2
done
[ "$(job_field "$JOB_B" Restarts)" = 1 ] || fail "(b) job $JOB_B was not requeued within 120 s"
first=($(metric_steps "$RUN_B"))
S="$(latest_step "$RUN_B/checkpoints")"
[ -n "$S" ] || fail "(b) no checkpoint after SIGUSR1 (no $RUN_B/checkpoints/latest)"
[ "$S" -lt "$PREEMPT_STEPS" ] || fail "(b) the job finished all $PREEMPT_STEPS steps before the signal; raise PREEMPT_STEPS"
expect_steps "${first[*]}" 1 "$S"
pass "(b) SIGUSR1 -> checkpoint at step $S (the last logged step), exit 75, job $JOB_B requeued"

for _ in $(seq 1500); do
    state="$(job_field "$JOB_B" JobState)"
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 0.2
done
[ "$state" = COMPLETED ] || fail "(b) requeued job $JOB_B ended $state (exit $(job_field "$JOB_B" ExitCode))"
expect_steps "$(metric_steps "$RUN_B")" 1 "$PREEMPT_STEPS"
[ "$(latest_step "$RUN_B/checkpoints")" = "$PREEMPT_STEPS" ] || fail "(b) no final checkpoint at $PREEMPT_STEPS"
pass "(b) resumed run continued at step $((S + 1)) and COMPLETED at step $PREEMPT_STEPS (restarts=1)"
# (c) the multi-node script, on this one node with 2 fake GPUs ------ ------------------------------------------------
RUN_C="$T/runs/pretrain"
say "(c) launch/slurm/pretrain.sbatch --nodes=1 --gpus-per-node=2 (job shape from SLURM variables), 2 steps"
rc=0
JOB_C="$(CONFIG="${SMOKE_CONFIG:-configs/smoke.yaml}" LOG_ROOT="$T/logs" sbatch --parsable --wait --nodes=1 \
    --gpus-per-node=2 --time=30 --job-name=pretrain --chdir="$REPO" --output="$T/jobs/%x-%j.out" \
    "$REPO/launch/slurm/pretrain.sbatch" "${COMMON[@]}" optim.train_steps=2 logging.run_dir="$RUN_C")" || rc=$?
JOB_C="${JOB_C%%;*}"
SUBMITTED+=("$JOB_C")
state="$(job_field "$JOB_C" JobState)"
[ "$rc" -eq 0 ] && [ "$state" = COMPLETED ] || fail "(c) pretrain job $JOB_C: sbatch --wait exit $rc, state $state"
expect_steps "$(metric_steps "$RUN_C")" 1 2
rank_log="$T/logs/pretrain-$JOB_C/$(hostname -s).log"
[ -f "$rank_log" ] && grep -q '^0: ' "$rank_log" && grep -q '^1: ' "$rank_log" \
    || fail "(c) expected rank 0 and rank 1 output in $rank_log"
pass "(c) pretrain job $JOB_C COMPLETED with 2 ranks (from gpus-per-node=2), rank logs in logs/pretrain-$JOB_C/"
say "all checks passed"
