#!/usr/bin/env bash
# The pipeline at maximum autonomy: supervised, restarts on, the monitor requests restarts, completed work is
# committed, decisions time out after 24 h. Pushing happens only when asked (--push or PIPELINE_AUTO_PUSH=1).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/run_autonomous.sh [--push] [coherence supervise options...]

Runs `coherence supervise --auto-recover --auto-commit ask` with
  PIPELINE_AUTO_RECOVER=1                  the monitor asks the supervisor for restarts
  PIPELINE_NEEDS_DECISION_TIMEOUT_HOURS=24 skip a backlog item whose decision never comes
(each one only if not already set in the environment).

Auto-commit (commit the workspace after each spec/test/impl/review task) is asked on a terminal, default no; not
on a terminal it is off unless PIPELINE_AUTO_COMMIT=1 or --auto-commit yes says otherwise. A line in the log says
which.

  --push      commit and push after each task (--auto-commit yes, PIPELINE_AUTO_PUSH=1); never forced
  --backlog FILE, --workers N, --until-done, ...   passed to `coherence supervise` (see its --help)
  --reset     start the backlog over: applies to the project manager's first start only (a restart keeps progress)

Whatever exits is restarted (exit 0 too); one pipeline per COHERENCE_HOME. A git failure in auto-commit is logged
(var/logs/commit_progress.log, var/logs/auto_commit.json) and stops nothing.
Stop with Ctrl-C, SIGTERM or `coherence stop`. Logs: var/logs/supervisor.log and the component logs.
USAGE
}

args=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --push) export PIPELINE_AUTO_PUSH=1; args+=(--auto-commit yes) ;;
        *) args+=("$arg") ;;
    esac
done

export PIPELINE_AUTO_RECOVER="${PIPELINE_AUTO_RECOVER:-1}"
export PIPELINE_NEEDS_DECISION_TIMEOUT_HOURS="${PIPELINE_NEEDS_DECISION_TIMEOUT_HOURS:-24}"

. "$(dirname "$0")/_coherence.sh"
exec "$coherence" supervise --auto-recover --auto-commit ask ${args[@]+"${args[@]}"}
