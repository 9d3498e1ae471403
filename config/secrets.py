"""Secrets come only from the environment, never from a file in git, and are never logged."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Secrets(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    slack_bot_token: SecretStr | None = None  # xoxb-: post and update messages
    slack_signing_secret: SecretStr | None = None  # verifies interactivity requests
    slack_app_token: SecretStr | None = None  # xapp-: Socket Mode
    slack_api_url: str = "https://slack.com/api/"  # a proxy or a local test server


def secrets() -> Secrets:
    """Read at call time, so a changed environment (tests, a restarted worker) is seen."""
    return Secrets()
