"""Telegram bot: operators read the pipeline and answer decisions from a phone; alerts reach the chats that watch.

The bot is an API client like every other component: its alerts (``notifier``) and, in long polling, its commands
(``commands``) go through ``ApiClient``. Updates come in by long polling (``getUpdates``, no public address needed)
or, with ``TELEGRAM_WEBHOOK_URL`` set, through ``POST /api/agent/telegram/webhook`` on the API (see
``api/routes_telegram.py``), which runs the same ``Commands`` in-process over its own store. Outgoing messages go
through one persisted outbox (``outbox``), delivered per chat in order with backoff, so an outage of the Bot API
(``botapi``) delays messages but neither loses, duplicates nor reorders them; alerts keep to each chat's rate limit
(``ratelimit``). What was notified is remembered in ``var/run/telegram_state.json`` (with the update offset and the
outbox), so a restart resends nothing. ``bot`` is the process (``coherence telegram``) that runs them all.
"""
