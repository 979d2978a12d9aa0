# Shared by tests/slurm/run_slurm_test.sh and tests/multinode/run_multinode_test.sh: a throw-away SLURM cluster
# (munged + slurmctld + slurmd, no systemd, no cgroups, no accounting) with all its state in one temp dir, and the
# helpers their checks use. Source it, call `cluster_begin NAME [--keep]`, then `start_munge`, `write_slurm_conf`,
# `start_daemon` ... Everything started through `start_daemon` is stopped by pid at exit (in reverse order), then
# the functions registered with `at_exit` run, then the temp dir goes (kept on failure or with --keep).
#
# Daemons run in the foreground (-F / -D) in the background of the calling shell, so $! is their pid; each gets
# PDEATHSIG, so that it dies with the test even when the test itself is killed with SIGKILL (munged excepted: the
# switch to user munge clears it). Processes that slurmd starts (job steps, ranks) are not covered by that.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The launch scripts find <repo>/.venv/bin/python themselves; a PYTHON in the environment overrides it there too.
TEST_PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
T0=$SECONDS
KEEP=0
PIDS=()         # daemons, stopped in reverse order
SUBMITTED=()    # job ids, cancelled first
AT_EXIT=()      # commands run after the daemons are stopped (namespaces, links), in reverse order
EXTRA_LOGS=()   # more files for dump_logs to show on failure

say()  { echo "[$TEST_NAME $((SECONDS - T0))s] $*"; }
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; dump_logs; exit 1; }
at_exit() { AT_EXIT+=("$*"); }

cluster_begin() {  # cluster_begin NAME [--keep]: checks, packages, temp dir, exit trap
    TEST_NAME="$1"; shift
    for arg in "$@"; do
        case "$arg" in
            --keep) KEEP=1 ;;
            *) echo "unknown argument $arg; see --help" >&2; exit 2 ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || { echo "FAIL: run as root (installs packages, starts munged as user munge)"; exit 1; }
    [ -x "$TEST_PYTHON" ] \
        || { echo "FAIL: $TEST_PYTHON not found; run \`make install\` first or set PYTHON=/path/to/python"; exit 1; }
    need_packages slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge
    id munge >/dev/null 2>&1 || { echo "FAIL: user munge does not exist; reinstall the munge package"; exit 1; }
    T="$(mktemp -d "/tmp/taidtron-$TEST_NAME.XXXXXX")"
    chmod 755 "$T"                      # munged (user munge) must traverse it to reach its own subdirectory
    mkdir -p "$T/munge" "$T/state" "$T/spool" "$T/log" "$T/jobs" "$T/runs"
    export SLURM_CONF="$T/slurm.conf"   # every client command (sbatch, squeue, scontrol, ...) reads this one
    trap cluster_end EXIT
    trap 'exit 130' INT TERM
}

need_packages() {  # need_packages COMMAND:PACKAGE ...: apt-get install the packages whose command is missing
    local item missing=()
    for item in "$@"; do command -v "${item%%:*}" >/dev/null || missing+=("${item#*:}"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_daemon() {  # start_daemon LOG CMD...: CMD in the background, output to $T/log/LOG.out, pid recorded
    local log="$1"; shift
    setpriv --pdeathsig TERM "$@" >"$T/log/$log.out" 2>&1 &
    PIDS+=($!)
}

stop_pid() {  # stop_pid PID: SIGTERM, 5 s grace, SIGKILL
    kill -TERM "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$1" 2>/dev/null && { echo "process $1 ignored SIGTERM: SIGKILL"; kill -KILL "$1"; }
    wait "$1" 2>/dev/null
    return 0
}

dump_logs() {
    echo "---- logs under $T (kept) ----"
    KEEP=1
    for f in "$T"/log/*.log "$T"/jobs/* "${EXTRA_LOGS[@]}"; do
        [ -f "$f" ] && { echo "==== $f (last 60 lines)"; tail -n 60 "$f"; }
    done
    return 0
}

cluster_end() {
    local rc=$? i
    set +e
    # Cancel our jobs first so that no trainer outlives slurmd, then give slurmstepd time to reap them.
    if [ "${#SUBMITTED[@]}" -gt 0 ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
        scancel "${SUBMITTED[@]}" 2>/dev/null
        for _ in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    for ((i = ${#AT_EXIT[@]} - 1; i >= 0; i--)); do eval "${AT_EXIT[i]}"; done
    if [ "$KEEP" -eq 1 ]; then echo "state kept in $T"; else rm -rf "$T"; fi
    echo "$TEST_NAME: $([ "$rc" -eq 0 ] && echo PASSED || echo FAILED) in $((SECONDS - T0)) s"
    exit "$rc"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_munge() {
    # munged refuses to run as root: run it as munge with its own key, socket, pid and seed files under $T.
    chown munge: "$T/munge"
    dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
    chown munge: "$T/munge/munge.key" && chmod 600 "$T/munge/munge.key"
    start_daemon munged setpriv --reuid=munge --regid=munge --init-groups munged -F \
        --key-file="$T/munge/munge.key" --socket="$T/munge/munge.socket" --pid-file="$T/munge/munged.pid" \
        --seed-file="$T/munge/munged.seed" --log-file="$T/log/munged.log"
    for _ in $(seq 50); do [ -S "$T/munge/munge.socket" ] && break; sleep 0.1; done
    [ -S "$T/munge/munge.socket" ] || fail "munged did not create its socket (see $T/log/munged.log)"
}

hardware_line() {  # hardware_line NODENAME: this machine as slurmd sees it (CPUs, sockets, memory), renamed
    local line
    line="$(slurmd -C | head -n 1)"
    [[ "$line" == NodeName=* ]] || fail "slurmd -C printed '$line'"
    echo "NodeName=$1 ${line#NodeName=* }"
}

write_slurm_conf() {  # write_slurm_conf CTL_ADDR NODE_LINE...: slurm.conf and gres.conf, 2 fake GPUs per node
    local ctl_addr="$1"; shift
    cat >"$SLURM_CONF" <<EOF
ClusterName=taidtron-test
SlurmctldHost=$(hostname -s)($ctl_addr)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also is how long a requeued job waits before it may start again (default 120 s; we requeue once).
AuthInfo=socket=$T/munge/munge.socket,cred_expire=10
StateSaveLocation=$T/state
# %n: one spool dir, pid file and log per slurmd, as several slurmds may share this file system.
SlurmdSpoolDir=$T/spool/slurmd-%n
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd-%n.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd-%n.log
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
# Look at pending jobs every second (defaults: 60 s main loop, 30 s backfill): a requeued job starts as soon as it
# may, instead of up to a minute later.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
${SLURM_CONF_EXTRA:-}
# Two fake "GPUs" (empty files, see gres.conf) per node so that pretrain.sbatch, which sizes its job from
# SLURM_GPUS_ON_NODE, runs here too; slurm sets CUDA_VISIBLE_DEVICES for them, torch finds no CUDA and the ranks
# use gloo.
GresTypes=gpu
EOF
    local line
    for line in "$@"; do echo "$line Gres=gpu:2 State=UNKNOWN" >>"$SLURM_CONF"; done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$SLURM_CONF"
    # slurmd drops file-less GPUs and wants device files: each fake GPU is a link to /dev/null (a character device,
    # the trailing digit is its index). slurmd reads gres.conf from the directory of slurm.conf.
    mkdir -p "$T/dev" && ln -sf /dev/null "$T/dev/nvidia0" && ln -sf /dev/null "$T/dev/nvidia1"
    echo "Name=gpu File=$T/dev/nvidia[0-1]" >"$T/gres.conf"
}

wait_nodes_idle() {  # wait_nodes_idle N: until N nodes are idle (20 s)
    for _ in $(seq 100); do
        [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)" -ge "$1" ] && return 0
        sleep 0.2
    done
    fail "$1 node(s) never became idle: $(sinfo -N 2>&1)"
}

# ---------------------------------------------------------------------------------------------------------------
# Job and run helpers.

job_field() {  # job_field JOBID Key -> value from `scontrol show job`
    scontrol -o show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1
}

FINAL_STATES="COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED"

wait_job_end() {  # wait_job_end JOBID SECONDS -> final state, or fails after SECONDS
    local state
    for _ in $(seq $(($2 * 5))); do
        state="$(job_field "$1" JobState)"
        [[ "$state" =~ ^($FINAL_STATES)$ ]] && { echo "$state"; return 0; }
        sleep 0.2
    done
    fail "job $1 still $state after $2 s"
}

wait_steps() {  # wait_steps JOBID RUN_DIR N SECONDS: until metrics.jsonl has N rows; fails if the job ends first
    local steps state
    for _ in $(seq $(($4 * 5))); do
        steps=($(metric_steps "$2"))
        [ "${#steps[@]}" -ge "$3" ] && return 0
        state="$(job_field "$1" JobState)"
        [[ "$state" =~ ^($FINAL_STATES)$ ]] && fail "job $1 ended $state after ${#steps[@]} of $3 steps"
        sleep 0.2
    done
    fail "job $1 logged ${#steps[@]} of $3 steps in $4 s"
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
