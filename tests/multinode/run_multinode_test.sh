#!/usr/bin/env bash
# `make multinode-test`: a throw-away cluster of two nodes on this machine, each a network namespace with its own
# host name (UTS namespace), IP address (a veth pair on a bridge) and /etc/hosts (a mount namespace that sees only
# that file changed), each running its own slurmd; slurmctld and munged run on the bridge address, as in
# `make slurm-test` (tests/slurm/lib.sh). The project's launch scripts run through it with the real trainer on
# CPU/gloo, 2 ranks per node (2 fake GPUs per node), configs/smoke.yaml with a random teacher:
#   (0) reference:   launch/torchrun.sh, one node (this host), 4 ranks;
#   (a) pretrain:    sbatch --nodes=2 launch/slurm/pretrain.sbatch: ranks 0,1 on node1 and 2,3 on node2 with local
#                    ranks 0,1, all meeting at node1's address; loss, grad_norm, t, lr identical to (0);
#   (b) preemption:  a 2-node job gets SIGUSR1: checkpoint, exit 75, requeue, every rank restarts on its node,
#                    resumes at the next step and completes;
#   (c) node lost:   node2's slurmd and every process in its namespace are killed mid-run: the run ends (not a
#                    hang) with NODE_FAIL within a bounded time and SLURM requeues the job (--requeue); node2 comes
#                    back, and the job resumes on both nodes from the last checkpoint and completes;
#   (d) torchrun:    launch/torchrun.sh with NNODES=2 / NODE_RANK / MASTER_ADDR=node1 (c10d rendezvous), one
#                    torchrun per namespace; placement as in (a), metrics identical to (0);
#   (e) deepspeed:   launch/deepspeed.sh with a two-host hostfile, started on node1: pdsh logs in to each node
#                    over ssh (an sshd per namespace, a throw-away key); placement and metrics as in (d).
# Every process it starts is stopped by pid at exit, also on failure; then whatever is left in a node's namespace
# (by pid), the veth links and the bridge are removed, and the temp dir. Nothing is written outside the temp dir
# except an empty /run/sshd (sshd insists on it), removed again if this test created it.
#
#   tests/multinode/run_multinode_test.sh [--keep]   --keep: leave the temp dir (logs, runs) for inspection
#   CHECKS="reference deepspeed" tests/multinode/run_multinode_test.sh   only these checks, in this order
set -euo pipefail
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;; esac
. "$(dirname "$0")/../slurm/lib.sh"
STEPS="${STEPS:-3}"                       # (0), (a), (d), (e): optimizer steps compared with the reference
LONG_STEPS="${LONG_STEPS:-20}"            # (b), (c): long enough that the signal / the node loss lands mid-run
SIGNAL_AFTER="${SIGNAL_AFTER:-4}"         # (b), (c): act once this many steps are logged
JOB_END_LIMIT="${JOB_END_LIMIT:-150}"     # (c): seconds within which the run must end after the node is lost
ALL_CHECKS="reference pretrain preempt nodelost torchrun deepspeed"
CHECKS="${CHECKS:-$ALL_CHECKS}"           # a subset runs only those (pretrain, torchrun, deepspeed need reference)
cluster_begin multinode-test "$@"
need_packages ip:iproute2 nsenter:util-linux sshd:openssh-server pdsh:pdsh
CHECK=("$TEST_PYTHON" "$REPO/tests/multinode/check.py")

# ---------------------------------------------------------------------------------------------------------------
# Nodes. A node is a holder process (`sleep`) that owns the namespaces; everything "on" the node is started with
# nsenter into them. nsenter, not `ip netns exec`: the latter remounts /sys, and slurmd then finds no cgroup fs.

NODES=(node1 node2)
HOLDER=()                                  # per node: the pid owning its namespaces
SLURMD=()                                  # per node: its slurmd's pid
NETNS=()                                   # per node: its network namespace, as readlink /proc/PID/ns/net shows it
BR="tdt$$"                                 # bridge; host ends of the veth pairs are tdt<pid>n1, tdt<pid>n2
SUBNET="10.$((100 + $$ % 100)).$(($$ / 100 % 250))"
CTL_ADDR="$SUBNET.254"                     # this host on the bridge: slurmctld, munged (socket), sbatch
ip -4 route show | grep -q "^$SUBNET\." \
    && fail "subnet $SUBNET.0/24 is already routed here; rerun (it depends on the pid)"

on_node() {  # on_node K CMD...: run CMD on node K (0-based), in this directory (entering a mount namespace cds to /)
    local k="$1"; shift
    nsenter --target "${HOLDER[k]}" --net --uts --mount --wd="$PWD" -- "$@"
}

node_pids() {  # node_pids K: every process in node K's network namespace except its holder
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/net" 2>/dev/null)" = "${NETNS[$1]}" ] && [ "${p#/proc/}" != "${HOLDER[$1]}" ] \
            && echo "${p#/proc/}"
    done
    return 0
}

kill_node() {  # kill_node K: SIGKILL every process on node K (as a crashed machine would stop)
    local pids
    pids=($(node_pids "$1"))
    [ "${#pids[@]}" -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null
    return 0
}

start_nodes() {
    local k name hosts="$T/hosts"
    ip link add "$BR" type bridge
    at_exit "ip link del $BR 2>/dev/null"
    ip addr add "$CTL_ADDR/24" dev "$BR"
    ip link set "$BR" up
    { echo "127.0.0.1 localhost"; echo "$CTL_ADDR $(hostname -s)"
      for k in "${!NODES[@]}"; do echo "$SUBNET.$((k + 1)) ${NODES[k]}"; done; } >"$hosts"
    for k in "${!NODES[@]}"; do
        name="${NODES[k]}"
        # The node's own /etc/hosts (a bind mount in its private mount namespace) resolves every node's name, as
        # DNS would on a cluster; the host's /etc/hosts is untouched.
        setpriv --pdeathsig KILL unshare --net --uts --mount --propagation private \
            sh -c "hostname $name && mount --bind $hosts /etc/hosts && ip link set lo up && exec sleep infinity" &
        HOLDER+=($!)
        PIDS+=($!)
        for _ in $(seq 50); do
            [ "$(nsenter --target "${HOLDER[k]}" --uts hostname 2>/dev/null)" = "$name" ] && break; sleep 0.1
        done
        NETNS+=("$(readlink "/proc/${HOLDER[k]}/ns/net")")
        at_exit "kill_node $k"   # runs after the daemons are stopped: whatever they left behind on the node
        ip link add "$BR$name" type veth peer name "$BR${name}c"
        at_exit "ip link del $BR$name 2>/dev/null"
        ip link set "$BR$name" master "$BR" up
        ip link set "$BR${name}c" netns "${HOLDER[k]}"
        on_node "$k" ip link set "$BR${name}c" name eth0
        on_node "$k" ip addr add "$SUBNET.$((k + 1))/24" dev eth0
        on_node "$k" ip link set eth0 up
    done
}

start_slurmd() {  # start_slurmd K: slurmd on node K, its spool dir created first
    mkdir -p "$T/spool/slurmd-${NODES[$1]}"
    start_daemon "slurmd-${NODES[$1]}" nsenter --target "${HOLDER[$1]}" --net --uts --mount -- \
        slurmd -D -f "$SLURM_CONF" -N "${NODES[$1]}"
    SLURMD[$1]=$!
}

start_cluster() {
    say "starting 2 nodes ($SUBNET.1, $SUBNET.2 on bridge $BR), munged, slurmctld, 2 slurmd under $T"
    start_nodes
    local k got
    for k in "${!NODES[@]}"; do
        got="$(on_node "$k" sh -c 'echo "$(hostname) $(getent hosts "$(hostname)" | cut -d" " -f1)"')"
        [ "$got" = "${NODES[k]} $SUBNET.$((k + 1))" ] || fail "node $k: hostname and address '$got'"
    done
    start_munge
    # SlurmdTimeout: how long slurmctld waits before it declares a silent node DOWN (300 s by default); short here so
    # that (c) sees the node marked down within the test.
    SLURM_CONF_EXTRA="SlurmdTimeout=20" write_slurm_conf "$CTL_ADDR" \
        "$(hardware_line node1) NodeAddr=$SUBNET.1" "$(hardware_line node2) NodeAddr=$SUBNET.2"
    start_daemon slurmctld slurmctld -D -c -f "$SLURM_CONF"
    start_slurmd 0
    start_slurmd 1
    wait_nodes_idle 2
    pass "two-node SLURM cluster up: $(sinfo -h -N -o '%N@%o' | tr '\n' ' ')(host names: $(on_node 0 hostname)," \
        "$(on_node 1 hostname))"
}

export CUDA_VISIBLE_DEVICES="" WANDB_MODE=disabled
COMMON=(teacher.init=null optim.warmup_steps=1 logging.wandb_mode=disabled logging.eval_interval=0)
SBATCH=(sbatch --parsable --nodes=2 --gpus-per-node=2 --time=30 --chdir="$REPO" --output="$T/jobs/%x-%j.out")
export LOG_ROOT="$T/logs"

rank_logs() {  # rank_logs JOB NAME: the per-node rank logs of a pretrain.sbatch job
    echo "$T/logs/$2-$1/node1.log" "$T/logs/$2-$1/node2.log"
}

# (0) reference ---------------------------------------------------------------------------------------------------
check_reference() {
    REF="$T/runs/reference"
    say "(0) reference: NPROC=4 launch/torchrun.sh configs/smoke.yaml on this host, $STEPS steps"
    NPROC=4 timeout 600 "$REPO/launch/torchrun.sh" configs/smoke.yaml "${COMMON[@]}" optim.train_steps="$STEPS" \
        logging.run_dir="$REF" >"$T/log/reference.log" 2>&1 \
        || { EXTRA_LOGS+=("$T/log/reference.log"); fail "(0) reference run failed"; }
    expect_steps "$(metric_steps "$REF")" 1 "$STEPS"
    pass "(0) reference run: 4 ranks on one node, $STEPS steps"
}

# (a) pretrain.sbatch on two nodes --------------------------------------------------------------------------------
check_pretrain() {
    RUN_A="$T/runs/pretrain"
    say "(a) sbatch --nodes=2 --gpus-per-node=2 launch/slurm/pretrain.sbatch configs/smoke.yaml, $STEPS steps"
    rc=0
    JOB_A="$("${SBATCH[@]}" --wait --job-name=pretrain launch/slurm/pretrain.sbatch configs/smoke.yaml "${COMMON[@]}" \
        optim.train_steps="$STEPS" logging.run_dir="$RUN_A")" || rc=$?
    SUBMITTED+=("$JOB_A")
    EXTRA_LOGS+=($(rank_logs "$JOB_A" pretrain))
    state="$(job_field "$JOB_A" JobState)"
    [ "$rc" -eq 0 ] && [ "$state" = COMPLETED ] || fail "(a) job $JOB_A: sbatch --wait exit $rc, state $state"
    [ "$(job_field "$JOB_A" NodeList)" = "node[1-2]" ] || fail "(a) job $JOB_A ran on $(job_field "$JOB_A" NodeList)"
    pass "(a) job $JOB_A COMPLETED on node[1-2]"
    out="$("${CHECK[@]}" placement --hosts node1,node2 --per-node 2 --rendezvous-ip "$SUBNET.1" \
        $(rank_logs "$JOB_A" pretrain))" || fail "(a) $out"
    pass "(a) $out"
    out="$("${CHECK[@]}" same-metrics "$RUN_A" "$REF")" || fail "(a) $out"
    pass "(a) $out"
}

# (b) preemption of a two-node job --------------------------------------------------------------------------------
check_preempt() {
    RUN_B="$T/runs/preempt"
    say "(b) preemption: 2-node $LONG_STEPS-step job, SIGUSR1 after $SIGNAL_AFTER logged steps"
    JOB_B="$("${SBATCH[@]}" --job-name=preempt launch/slurm/pretrain.sbatch configs/smoke.yaml "${COMMON[@]}" \
        optim.train_steps="$LONG_STEPS" checkpoint.save_interval=0 logging.run_dir="$RUN_B")"
    SUBMITTED+=("$JOB_B")
    EXTRA_LOGS+=($(rank_logs "$JOB_B" preempt))
    wait_steps "$JOB_B" "$RUN_B" "$SIGNAL_AFTER" 300
    scancel --signal=USR1 "$JOB_B"
    say "(b) sent SIGUSR1 to job $JOB_B at logged step $(metric_steps "$RUN_B" | awk '{ print $NF }')"
    for _ in $(seq 600); do
        [ "$(job_field "$JOB_B" Restarts)" = 1 ] && break
        state="$(job_field "$JOB_B" JobState)"
        [[ "$state" =~ ^($FINAL_STATES)$ ]] && fail "(b) job $JOB_B ended $state without being requeued"
        sleep 0.2
    done
    [ "$(job_field "$JOB_B" Restarts)" = 1 ] || fail "(b) job $JOB_B was not requeued within 120 s"
    S="$(latest_step "$RUN_B/checkpoints")"
    [ -n "$S" ] && [ "$S" -lt "$LONG_STEPS" ] || fail "(b) checkpoint after SIGUSR1: '$S'"
    expect_steps "$(metric_steps "$RUN_B")" 1 "$S"
    grep -q "trainer preempted (exit 75): requeueing job $JOB_B" "$T/jobs/preempt-$JOB_B.out" \
        || fail "(b) the batch script did not see exit 75"
    pass "(b) SIGUSR1 -> checkpoint at step $S on both nodes' ranks, exit 75, job $JOB_B requeued"
    state="$(wait_job_end "$JOB_B" 600)"
    [ "$state" = COMPLETED ] || fail "(b) requeued job $JOB_B ended $state (exit $(job_field "$JOB_B" ExitCode))"
    expect_steps "$(metric_steps "$RUN_B")" 1 "$LONG_STEPS"
    out="$("${CHECK[@]}" placement --hosts node1,node2 --per-node 2 --rendezvous-ip "$SUBNET.1" --starts 2 \
        $(rank_logs "$JOB_B" preempt))" || fail "(b) $out"
    grep -q "resumed from $RUN_B/checkpoints/iter_$(printf %07d "$S")" "$T/logs/preempt-$JOB_B/node1.log" \
        || fail "(b) rank 0 did not log 'resumed from .../iter_$(printf %07d "$S")'"
    pass "(b) every rank started twice on its node (2 placement lines each), resumed at step $((S + 1))," \
        "COMPLETED at $LONG_STEPS"
}

# (c) a node lost mid-run -----------------------------------------------------------------------------------------
check_nodelost() {
    RUN_C="$T/runs/nodelost"
    say "(c) node lost: 2-node $LONG_STEPS-step job (checkpoint every 2 steps), node2 killed after $SIGNAL_AFTER steps"
    JOB_C="$("${SBATCH[@]}" --job-name=nodelost launch/slurm/pretrain.sbatch configs/smoke.yaml "${COMMON[@]}" \
        optim.train_steps="$LONG_STEPS" checkpoint.save_interval=2 logging.run_dir="$RUN_C")"
    SUBMITTED+=("$JOB_C")
    EXTRA_LOGS+=($(rank_logs "$JOB_C" nodelost))
    wait_steps "$JOB_C" "$RUN_C" "$SIGNAL_AFTER" 300
    lost_at=$SECONDS
    victims="$(node_pids 1 | xargs ps -o comm= -p | sort | uniq -c \
        | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')"
    kill_node 1
    wait "${SLURMD[1]}" 2>/dev/null || true   # reap it here, so that bash does not report the kill later
    say "(c) SIGKILLed every process on node2 ($victims) at logged step $(metric_steps "$RUN_C" | awk '{ print $NF }')"
    # srun waits for node2's tasks until slurmctld declares the silent node DOWN (SlurmdTimeout) and ends the run
    # with NODE_FAIL; the job carries --requeue, so SLURM puts it back in the queue, where it waits for two nodes.
    for _ in $(seq $((JOB_END_LIMIT * 5))); do
        [ "$(job_field "$JOB_C" Restarts)" = 1 ] && break
        state="$(job_field "$JOB_C" JobState)"
        [[ "$state" =~ ^($FINAL_STATES)$ ]] && fail "(c) job $JOB_C ended $state instead of being requeued"
        sleep 0.2
    done
    [ "$(job_field "$JOB_C" Restarts)" = 1 ] \
        || fail "(c) job $JOB_C still $(job_field "$JOB_C" JobState) $JOB_END_LIMIT s after the node was lost"
    grep -q "srun: error: Node failure on node2" "$T/jobs/nodelost-$JOB_C.out" \
        || fail "(c) the job output does not say that node2 failed"
    # How node1's ranks learnt of it depends on where they were: in a collective with node2 they fail at once
    # (gloo: connection closed by peer); waiting elsewhere (e.g. on the rendezvous store, which node1 hosts) they
    # block until SLURM stops the run. Either way the run's end is bounded by SlurmdTimeout.
    if grep -q "by peer \[$SUBNET.2\]\|Read error \[$SUBNET.2\]" "$T/logs/nodelost-$JOB_C/node1.log"; then
        how="node1's ranks failed on their own (connection to $SUBNET.2 closed)"
    else
        how="node1's ranks were blocked until SLURM ended the run"
    fi
    S="$(latest_step "$RUN_C/checkpoints")"
    [ -n "$S" ] || fail "(c) no checkpoint survived"
    pass "(c) the run ended $((SECONDS - lost_at)) s after the node was lost ($how): the job output says" \
        "'Node failure on node2', node2 is $(sinfo -h -n node2 -o %T), job requeued (last checkpoint: step $S)"
    start_slurmd 1
    say "(c) node2 back (slurmd restarted): the requeued job starts on both nodes again"
    state="$(wait_job_end "$JOB_C" 600)"
    [ "$state" = COMPLETED ] || fail "(c) requeued job $JOB_C ended $state (exit $(job_field "$JOB_C" ExitCode))"
    grep -q "resumed from $RUN_C/checkpoints/iter_$(printf %07d "$S")" "$T/logs/nodelost-$JOB_C/node1.log" \
        || fail "(c) the requeued job did not resume from iter_$(printf %07d "$S")"
    expect_steps "$(metric_steps "$RUN_C")" 1 "$LONG_STEPS"
    out="$("${CHECK[@]}" placement --hosts node1,node2 --per-node 2 --rendezvous-ip "$SUBNET.1" --starts 2 \
        $(rank_logs "$JOB_C" nodelost))" || fail "(c) $out"
    pass "(c) the last checkpoint (step $S) loaded on both nodes: resumed at step $((S + 1)), COMPLETED at $LONG_STEPS"
}

# (d) torchrun across the two namespaces --------------------------------------------------------------------------
check_torchrun() {
    RUN_D="$T/runs/torchrun"
    say "(d) NNODES=2 NODE_RANK=0|1 MASTER_ADDR=node1 launch/torchrun.sh configs/smoke.yaml, one per node, $STEPS steps"
    TR_PIDS=()
    for k in 1 0; do   # the second node first: it must wait for the host of the rendezvous store
        on_node "$k" env NNODES=2 NODE_RANK="$k" MASTER_ADDR=node1 MASTER_PORT=29400 NPROC=2 timeout 600 \
            "$REPO/launch/torchrun.sh" configs/smoke.yaml "${COMMON[@]}" optim.train_steps="$STEPS" \
            logging.run_dir="$RUN_D" >"$T/log/torchrun-${NODES[k]}.log" 2>&1 &
        TR_PIDS+=($!)
        EXTRA_LOGS+=("$T/log/torchrun-${NODES[k]}.log")
    done
    for pid in "${TR_PIDS[@]}"; do wait "$pid" || fail "(d) a torchrun exited non-zero"; done
    out="$("${CHECK[@]}" placement --hosts node1,node2 --per-node 2 --rendezvous-ip "$SUBNET.1" \
        "$T/log/torchrun-node1.log" "$T/log/torchrun-node2.log")" || fail "(d) $out"
    pass "(d) $out"
    out="$("${CHECK[@]}" same-metrics "$RUN_D" "$REF")" || fail "(d) $out"
    pass "(d) $out"
}

# (e) deepspeed.sh: pdsh + ssh between the namespaces -------------------------------------------------------------
check_deepspeed() {
    RUN_E="$T/runs/deepspeed"
    say "(e) launch/deepspeed.sh configs/smoke.yaml with hostfile 'node1 slots=2, node2 slots=2', from node1, $STEPS steps"
    mkdir -p "$T/ssh"
    [ -d /run/sshd ] || { mkdir -p /run/sshd && at_exit "rmdir /run/sshd"; }   # sshd's privilege-separation dir
    ssh-keygen -q -t ed25519 -N "" -f "$T/ssh/host_key"
    ssh-keygen -q -t ed25519 -N "" -f "$T/ssh/id"
    cp "$T/ssh/id.pub" "$T/ssh/authorized_keys"
    for k in "${!NODES[@]}"; do
        start_daemon "sshd-${NODES[k]}" nsenter --target "${HOLDER[k]}" --net --uts --mount -- "$(command -v sshd)" -D -e \
            -f /dev/null -o ListenAddress="$SUBNET.$((k + 1))" -o HostKey="$T/ssh/host_key" -o PidFile=none \
            -o AuthorizedKeysFile="$T/ssh/authorized_keys" -o StrictModes=no -o UsePAM=no -o PermitRootLogin=yes
    done
    printf 'node1 slots=2\nnode2 slots=2\n' >"$T/hostfile"
    # The ranks' environment comes only from this file (pdsh starts a fresh login shell on each node).
    # GLOO_SOCKET_IFNAME: the documented way to pick the ranks' network (here the nodes' host names would do).
    printf 'CUDA_VISIBLE_DEVICES=\nWANDB_MODE=disabled\nOMP_NUM_THREADS=1\nGLOO_SOCKET_IFNAME=eth0\n' >"$T/ds_env"
    local throwaway_host="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    export PDSH_SSH_ARGS_APPEND="-i $T/ssh/id $throwaway_host"
    rc=0
    on_node 0 env HOSTFILE="$T/hostfile" MASTER_ADDR=node1 MASTER_PORT=29401 DS_ENV_FILE="$T/ds_env" \
        DS_LAUNCHER_ARGS=--no_ssh_check timeout 600 "$REPO/launch/deepspeed.sh" configs/smoke.yaml "${COMMON[@]}" \
        optim.train_steps="$STEPS" logging.run_dir="$RUN_E" >"$T/log/deepspeed.log" 2>&1 || rc=$?
    EXTRA_LOGS+=("$T/log/deepspeed.log")
    [ "$rc" -eq 0 ] || fail "(e) deepspeed.sh exited $rc"
    out="$("${CHECK[@]}" placement --hosts node1,node2 --per-node 2 --rendezvous-ip "$SUBNET.1" "$T/log/deepspeed.log")" \
        || fail "(e) $out"
    pass "(e) $out"
    out="$("${CHECK[@]}" same-metrics "$RUN_E" "$REF")" || fail "(e) $out"
    pass "(e) $out"
}

for check in $CHECKS; do
    declare -F "check_$check" >/dev/null || fail "unknown check '$check' in CHECKS (known: $ALL_CHECKS)"
done
start_cluster
for check in $CHECKS; do "check_$check"; done
say "all checks passed ($CHECKS)"
