"""cliff commands: one small class per verb, registered as entry points."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from cliff.command import Command

    from capstan.core.config import Config
    from capstan.shell import CapstanApp


def app_config(command: Command) -> Config:
    """The configuration of the app running *command*."""
    return cast("CapstanApp", command.app).config
