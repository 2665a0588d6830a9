"""The Telegram bot's settings, declared apart so settings.py stays one screenful per part; Settings inherits them,
so they are read, described and checked like every other field."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from coherence_network.setting_values import HttpUrl, IdList, parse_ids


class TelegramSettings(BaseSettings):
    """The bot's token, chats, users, addresses, polling and alert pacing."""

    telegram_bot_token: str = Field("", description="Bot API token from @BotFather; empty disables the bot")
    telegram_chat_ids: IdList = Field("", description="Chat ids alerts go to, comma-separated (commands work there "
                                      "too)")
    telegram_allowed_user_ids: IdList = Field(
        "", description="User ids that may command the bot, comma-separated; empty means nobody"
    )
    telegram_api_base: HttpUrl = Field("https://api.telegram.org", description="Bot API base address (tests point it "
                                   "at a local fake)")
    telegram_webhook_url: HttpUrl = Field(
        "", description="Public URL of POST /api/agent/telegram/webhook; set = webhook mode, empty = long polling"
    )
    telegram_webhook_secret: str = Field(
        "", description="Secret Telegram sends with each webhook call; empty = generated in var/run/"
    )
    telegram_poll_timeout: float = Field(25.0, gt=0, description="Seconds one getUpdates long poll may wait")
    telegram_notify_interval: float = Field(
        15.0, gt=0, description="Seconds between the bot's polls of the API for things to notify"
    )
    telegram_rate_burst: int = Field(10, ge=1, description="Alerts a chat may get at once before the rate limit")
    telegram_rate_per_minute: float = Field(
        6.0, gt=0, description="Alerts per minute a chat gets after the burst; the rest wait their turn"
    )
    telegram_remind_after_hours: float = Field(1.0, ge=0, description="Remind a chat of a decision still waiting "
                                               "this long after its alert, then after twice as long each time; "
                                               "0: never")
    telegram_remind_max_hours: float = Field(24.0, gt=0,
                                             description="Longest delay between two reminders of a decision")

    @property
    def telegram_chats(self) -> frozenset[int]:
        return parse_ids(self.telegram_chat_ids)

    @property
    def telegram_allowed_users(self) -> frozenset[int]:
        return parse_ids(self.telegram_allowed_user_ids)
