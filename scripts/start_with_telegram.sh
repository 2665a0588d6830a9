#!/usr/bin/env bash
# Start the API (unless one already answers at AGENT_API_BASE) and the Telegram bot in the mode the settings select
# (long polling, or webhook when TELEGRAM_WEBHOOK_URL is set). Stops only what it started, on exit or a signal.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/start_with_telegram.sh [--help]

Starts `coherence api` if no API answers at AGENT_API_BASE yet, then `coherence telegram`
(long polling; webhook mode when TELEGRAM_WEBHOOK_URL is set). Runs until the bot exits or
you press Ctrl-C / send SIGTERM; then it stops the bot, and the API only if it started it.

Needs TELEGRAM_BOT_TOKEN; set TELEGRAM_CHAT_IDS (where alerts go) and
TELEGRAM_ALLOWED_USER_IDS (who may command). Logs: var/logs/api.log, var/logs/telegram.log.
USAGE
}

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

. "$(dirname "$0")/_coherence.sh"

"$coherence" telegram --check-config >/dev/null || exit 2  # say what is missing before starting anything

api_pid=""
bot_pid=""
stop_started() {
    trap - EXIT INT TERM
    for pid in $bot_pid $api_pid; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $bot_pid $api_pid; do
        wait "$pid" 2>/dev/null || true
    done
}
trap 'stop_started' EXIT
trap 'stop_started; exit 130' INT
trap 'stop_started; exit 143' TERM

if "$coherence" telegram --check-api >/dev/null 2>&1; then
    echo "an API already answers; using it (not started here)"
else
    "$coherence" api &
    api_pid=$!
    for _ in $(seq 1 60); do
        "$coherence" telegram --check-api >/dev/null 2>&1 && break
        kill -0 "$api_pid" 2>/dev/null || { echo "the API exited; see var/logs/api.log" >&2; exit 1; }
        sleep 0.5
    done
    "$coherence" telegram --check-api >&2 || exit 1
fi

"$coherence" telegram &
bot_pid=$!
echo "telegram bot started (pid $bot_pid); logs in var/logs/telegram.log"
set +e
wait "$bot_pid"
status=$?
bot_pid=""
exit "$status"
