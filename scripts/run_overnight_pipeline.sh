#!/usr/bin/env bash
# The supervised pipeline for unattended runs: dead components are restarted, one that keeps crashing becomes a
# fatal issue (`coherence fatal`). --no-watchdog runs each component once, without restarts.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/run_overnight_pipeline.sh [--no-watchdog] [coherence supervise options...]

Runs `coherence supervise` (API, runner, project manager, monitor) until stopped.
  --no-watchdog   run the pipeline once: nothing is restarted (`coherence supervise --no-restart`)
  --backlog FILE, --workers N, --until-done, ...   passed to `coherence supervise` (see its --help)

Stop with Ctrl-C, SIGTERM or `coherence stop`. Check it in the morning: `coherence doctor`, `coherence fatal`.
USAGE
}

args=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --no-watchdog) args+=("--no-restart") ;;
        *) args+=("$arg") ;;
    esac
done

. "$(dirname "$0")/_coherence.sh"
exec "$coherence" supervise ${args[@]+"${args[@]}"}
