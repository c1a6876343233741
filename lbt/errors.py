"""Errors that lbt reports to users as one clear line."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid config value. ``str()`` is one line: ``config.<field>: <message>``.

    ``message`` says what is wrong and how to fix it.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"config.{field}: {message}")


class TrainingError(RuntimeError):
    """A failure during training that the user must act on (e.g. a non-finite loss)."""


class CheckpointError(RuntimeError):
    """No usable checkpoint to resume from, or a config that differs from the checkpoint's."""
