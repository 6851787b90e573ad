# shellcheck shell=bash
# Helpers shared by the scripts in scripts/. Sourced, never run; defines functions (and the
# few variables below) only:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
#   log MSG...             "[PREFIX] MSG" on stderr (stdout is kept for what a script prints as
#                          its result). PREFIX is $LOG_PREFIX: the script's file name unless the
#                          script sets it after sourcing (run-cpp-sanitizers.sh: "sanitizers").
#   die MSG...             "[PREFIX] ERROR: MSG" on stderr, then exit 1.
#   usage [STATUS]         the script's header comment (line 2 down to `set -euo pipefail`,
#                          "# " stripped) on stderr, then exit STATUS (default 2).
#   as_root CMD...         CMD directly when root, else through `sudo -n` (never prompts).
#   retry N DELAY CMD...   CMD up to N times, DELAY seconds apart, a log line per failed attempt;
#                          returns 0 or CMD's last status. The log names $RETRY_WHAT if set,
#                          else the command line.
#   apt_get_retry ARGS...  `apt-get ARGS` as root, non-interactive, waiting up to 60 s for the
#                          dpkg lock (unattended-upgrades, another script) and retried:
#                          $APT_RETRY_TRIES attempts (default 60), $APT_RETRY_DELAY s apart
#                          (default 10).
#   step TITLE...          the "===== [  12s] TITLE =====" banner on stdout, after a blank line.
#   step_elapsed           seconds since $PYPERSISTENT_STARTED.
#   stamp_matches FILE S   whether FILE exists and holds exactly S (cache stamps).
#
# PYPERSISTENT_STARTED (epoch seconds) is taken from the environment when a calling script has
# set it, else set when lib.sh is first sourced; it is exported, so the banners of scripts run
# by scripts/test.sh (or setup-machine.sh) count from the top-level start.

# Sourcing twice (a script and lib-trixie-apt.sh both do) is harmless; the second is skipped so
# a LOG_PREFIX set in between survives.
[ -z "${_pypersistent_lib_sh:-}" ] || return 0
_pypersistent_lib_sh=1

LOG_PREFIX=${0##*/}

if [[ ! ${PYPERSISTENT_STARTED:-} =~ ^[0-9]+$ ]]; then
    PYPERSISTENT_STARTED=$(date +%s)
fi
export PYPERSISTENT_STARTED

log() { printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LOG_PREFIX" "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit "${1:-2}"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

retry() {
    local tries=$1 delay=$2 i rc
    shift 2
    for ((i = 1; ; i++)); do
        if "$@"; then return 0; else rc=$?; fi
        if [ "$i" -ge "$tries" ]; then
            log "${RETRY_WHAT:-$*} failed (exit $rc); giving up after $tries attempts"
            return "$rc"
        fi
        log "${RETRY_WHAT:-$*} failed (exit $rc), retrying in ${delay}s ($i/$tries)"
        sleep "$delay"
    done
}

apt_get_retry() {
    # The sub-command (update, install...) names the attempt in retry's log lines.
    local a sub="" skip=0
    for a in "$@"; do
        if [ "$skip" -eq 1 ]; then skip=0; continue; fi
        case $a in -o|-c|-t) skip=1 ;; -*) ;; *) sub=$a; break ;; esac
    done
    # shellcheck disable=SC2034  # read by retry (dynamic scope)
    local RETRY_WHAT="apt-get $sub"
    retry "${APT_RETRY_TRIES:-60}" "${APT_RETRY_DELAY:-10}" \
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=60 "$@"
}

step_elapsed() { echo $(( $(date +%s) - PYPERSISTENT_STARTED )); }
step() { printf '\n===== [%4ds] %s =====\n' "$(step_elapsed)" "$*"; }

stamp_matches() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
