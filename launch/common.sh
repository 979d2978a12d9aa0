# Sourced by every launcher (torchrun.sh, deepspeed.sh, slurm/*.sbatch): one way to take the arguments
# `CONFIG [section.key=value ...]`, one way to find the project's Python.
#
# launch_parse_args SCRIPT "$@"  -> sets CONFIG and OVERRIDES, or prints the script's header (--help) / one line
#                                   naming the problem (exit 2).
# launch_find_python REPO        -> sets PYTHON: $PYTHON if set, else REPO/.venv/bin/python when it exists (no
#                                   need to activate the venv), else python3 from PATH.
# launch_module SCRIPT           -> sets MODULE, what the ranks run: $TAIDTRON_MODULE if set (taidtron.train or
#                                   taidtron.cache_teacher, whose own options, e.g. --out DIR --top-k K, follow
#                                   CONFIG), else taidtron.train.
# launch_dry_run CMD...          -> with DRY_RUN=1: prints CMD (shell-quoted) and exits 0, before anything runs.

launch_usage() {  # the comment block at the top of the script, without the shebang
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); if ($0 !~ /^SBATCH/) print; next } NR > 1 { exit }' "$1"
}

launch_parse_args() {
    local script="$1"; shift
    case "${1:-}" in
        -h|--help) launch_usage "$script"; exit 0 ;;
        "") echo "$(basename "$script"): missing CONFIG: pass a YAML file first, e.g. configs/smoke.yaml" \
                 "(--help for usage)" >&2; exit 2 ;;
        -*|*=*) echo "$(basename "$script"): the first argument must be the config file, got '$1';" \
                     "usage: CONFIG [section.key=value ...]" >&2; exit 2 ;;
    esac
    [ -f "$1" ] || { echo "$(basename "$script"): config file $1 does not exist (relative to $PWD);" \
                          "pass a file from configs/" >&2; exit 2; }
    CONFIG="$1"; shift
    OVERRIDES=("$@")
}

launch_find_python() {
    if [ -n "${PYTHON:-}" ]; then
        :
    elif [ -x "$1/.venv/bin/python" ]; then
        PYTHON="$1/.venv/bin/python"
    else
        PYTHON=python3
    fi
}

launch_module() {
    MODULE="${TAIDTRON_MODULE:-taidtron.train}"
    case "$MODULE" in
        taidtron.train|taidtron.cache_teacher) ;;
        *) echo "$(basename "$1"): TAIDTRON_MODULE=$MODULE is not an entry point; use taidtron.train (the default)" \
                "or taidtron.cache_teacher" >&2; exit 2 ;;
    esac
}

launch_dry_run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '%q ' "$@"; echo
        exit 0
    fi
}
