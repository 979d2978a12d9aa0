#!/usr/bin/env bash
# `make slurm-test`: start a real, throw-away one-node SLURM cluster on this machine (munged + slurmctld + slurmd, no
# systemd, no cgroups, no accounting) and run the project's launch/slurm/ scripts through it:
#   (a) smoke:      sbatch --wait smoke.sbatch; the job is COMPLETED, a checkpoint and metrics.jsonl exist, one row
#                   per step;
#   (b) preemption: a longer smoke job is sent SIGUSR1 (`scancel --signal=USR1`, which reaches the srun tasks, as
#                   `#SBATCH --signal=USR1@<s>` does near the time limit); the trainer checkpoints the step it reached
#                   and exits 75; the batch script requeues the job; the requeued job resumes at the next step and
#                   completes;
#   (c) pretrain.sbatch --nodes=1 --gpus-per-node=2 on two fake GPUs: 2 ranks from the job shape;
#   (d) bad input: a job whose 2 ranks both refuse an unknown key ends with exit code 2 and the line once in its
#                   output (not once per rank).
# All state (slurm.conf, munge key and socket, spool, logs, run directories) lives in one temp dir; every daemon it
# starts is stopped by pid on exit. Needs root (to install the packages when missing and to run munged as `munge`).
# tests/multinode/run_multinode_test.sh does the same on two nodes; tests/slurm/lib.sh holds what they share.
#
#   tests/slurm/run_slurm_test.sh [--keep]     --keep: leave the temp dir for inspection (its path is printed)
set -euo pipefail
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;; esac
. "$(dirname "$0")/lib.sh"
SMOKE_STEPS="${SMOKE_STEPS:-4}"           # test (a): optimizer steps, checkpoint every 2
PREEMPT_STEPS="${PREEMPT_STEPS:-60}"      # test (b): long enough that the signal lands mid-run
PREEMPT_AFTER="${PREEMPT_AFTER:-3}"       # test (b): signal once this many steps are logged
cluster_begin slurm-test "$@"

say "starting munged, slurmctld, slurmd under $T"
start_munge
write_slurm_conf 127.0.0.1 "$(hardware_line "$(hostname -s)") NodeAddr=127.0.0.1"
start_daemon slurmctld slurmctld -D -c -f "$SLURM_CONF"   # -c: start from a clean state
start_daemon slurmd slurmd -D -f "$SLURM_CONF" -N "$(hostname -s)"
wait_nodes_idle 1
pass "local SLURM cluster up: $(sinfo -h -o '%P %D node(s) %c CPUs %T')"

# The job environment is this one (sbatch exports it): no GPU (gloo), no wandb network.
export CUDA_VISIBLE_DEVICES="" WANDB_MODE=disabled
# configs/smoke.yaml with a random teacher (its pretrained one comes from `make smoke-test`; this test checks the
# launch, stop and resume path, not learning), a short warm-up, no wandb and no periodic validation.
COMMON=(teacher.init=null optim.warmup_steps=1 logging.wandb_mode=disabled logging.eval_interval=0)

submit() {  # submit NAME [sbatch options...] -- [trainer overrides...] -> prints the job id
    local name="$1"; shift
    local opts=()
    while [ "$#" -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    sbatch --parsable --job-name="$name" --chdir="$REPO" --output="$T/jobs/%x-%j.out" "${opts[@]}" \
        "$REPO/launch/slurm/smoke.sbatch" configs/smoke.yaml "$@"
}

# (a) smoke -----------------------------------------------------------------------------------------------------
RUN_A="$T/runs/smoke"
say "(a) smoke: sbatch --wait launch/slurm/smoke.sbatch configs/smoke.yaml, $SMOKE_STEPS steps"
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
wait_steps "$JOB_B" "$RUN_B" "$PREEMPT_AFTER" 120
# What `#SBATCH --signal=USR1@<s>` does near the time limit: the signal goes to the step's tasks (the ranks).
scancel --signal=USR1 "$JOB_B"
say "(b) sent SIGUSR1 to job $JOB_B at logged step $(metric_steps "$RUN_B" | awk '{ print $NF }')"

# The requeue shows as Restarts=1; the checkpoint of the step the trainer reached is then on disk.
for _ in $(seq 600); do
    [ "$(job_field "$JOB_B" Restarts)" = 1 ] && break
    state="$(job_field "$JOB_B" JobState)"
    [[ "$state" =~ ^($FINAL_STATES)$ ]] && fail "(b) job $JOB_B ended $state without being requeued"
    sleep 0.2
done
[ "$(job_field "$JOB_B" Restarts)" = 1 ] || fail "(b) job $JOB_B was not requeued within 120 s"
first=($(metric_steps "$RUN_B"))
S="$(latest_step "$RUN_B/checkpoints")"
[ -n "$S" ] || fail "(b) no checkpoint after SIGUSR1 (no $RUN_B/checkpoints/latest)"
[ "$S" -lt "$PREEMPT_STEPS" ] || fail "(b) the job finished all $PREEMPT_STEPS steps before the signal; raise PREEMPT_STEPS"
expect_steps "${first[*]}" 1 "$S"
pass "(b) SIGUSR1 -> checkpoint at step $S (the last logged step), exit 75, job $JOB_B requeued"

state="$(wait_job_end "$JOB_B" 300)"
[ "$state" = COMPLETED ] || fail "(b) requeued job $JOB_B ended $state (exit $(job_field "$JOB_B" ExitCode))"
expect_steps "$(metric_steps "$RUN_B")" 1 "$PREEMPT_STEPS"
[ "$(latest_step "$RUN_B/checkpoints")" = "$PREEMPT_STEPS" ] || fail "(b) no final checkpoint at $PREEMPT_STEPS"
pass "(b) resumed run continued at step $((S + 1)) and COMPLETED at step $PREEMPT_STEPS (restarts=1)"

# (c) the multi-node script, on this one node with 2 fake GPUs ----------------------------------------------------
RUN_C="$T/runs/pretrain"
say "(c) launch/slurm/pretrain.sbatch --nodes=1 --gpus-per-node=2 (job shape from SLURM variables), 2 steps"
rc=0
JOB_C="$(LOG_ROOT="$T/logs" sbatch --parsable --wait --nodes=1 --gpus-per-node=2 --time=30 --job-name=pretrain \
    --chdir="$REPO" --output="$T/jobs/%x-%j.out" "$REPO/launch/slurm/pretrain.sbatch" configs/smoke.yaml \
    "${COMMON[@]}" optim.train_steps=2 logging.run_dir="$RUN_C")" || rc=$?
JOB_C="${JOB_C%%;*}"
SUBMITTED+=("$JOB_C")
state="$(job_field "$JOB_C" JobState)"
[ "$rc" -eq 0 ] && [ "$state" = COMPLETED ] || fail "(c) pretrain job $JOB_C: sbatch --wait exit $rc, state $state"
expect_steps "$(metric_steps "$RUN_C")" 1 2
rank_log="$T/logs/pretrain-$JOB_C/$(hostname -s).log"
[ -f "$rank_log" ] && grep -q '^0: ' "$rank_log" && grep -q '^1: ' "$rank_log" \
    || fail "(c) expected rank 0 and rank 1 output in $rank_log"
pass "(c) pretrain job $JOB_C COMPLETED with 2 ranks (from gpus-per-node=2), rank logs in logs/pretrain-$JOB_C/"

# (d) bad input: the ranks' word, once ---------------------------------------------------------------------------
say "(d) bad input: smoke.sbatch with an unknown key"
rc=0
JOB_D="$(submit badkey --wait -- "${COMMON[@]}" optim.bogus=1 logging.run_dir="$T/runs/badkey")" || rc=$?
JOB_D="${JOB_D%%;*}"
SUBMITTED+=("$JOB_D")
[ "$(job_field "$JOB_D" ExitCode)" = "2:0" ] \
    || fail "(d) job $JOB_D: exit code $(job_field "$JOB_D" ExitCode), expected 2:0 (sbatch --wait exit $rc)"
lines="$(grep -c 'taidtron: configuration error: unknown config key(s) optim.bogus' "$T/jobs/badkey-$JOB_D.out" || true)"
[ "$lines" = 1 ] || fail "(d) job $JOB_D printed the error line $lines times (expected once): $T/jobs/badkey-$JOB_D.out"
! grep -q Traceback "$T/jobs/badkey-$JOB_D.out" || fail "(d) job $JOB_D printed a traceback"
pass "(d) bad input: job $JOB_D exit code 2, the line once, no traceback"
say "all checks passed"
