#!/usr/bin/env bash
# Is the pipeline effective? `coherence doctor`: [OK] or [ACTION] per check, each action with its command and runbook
# section; exit 1 when anything needs action.
set -euo pipefail

case "${1:-}" in
    -h|--help)
        echo "Usage: scripts/ensure_effective_pipeline.sh [--json]"
        echo
        echo "Runs \`coherence doctor\`: API reachable and ready, endpoints, version, runner/manager/monitor seen,"
        echo "disk, database writable, fatal issues; an effectiveness summary. Exit 0 all OK, 1 action needed."
        exit 0 ;;
esac

. "$(dirname "$0")/_coherence.sh"
exec "$coherence" doctor "$@"
