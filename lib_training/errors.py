"""Errors a user can act on: what went wrong, with which file, and what to do."""

from __future__ import annotations


class LoraStudioError(Exception):
    """Base of every error the engine raises on purpose; its message is shown as is."""


class SettingsError(LoraStudioError):
    """A training setting is out of range or inconsistent."""


class DatasetError(LoraStudioError):
    """The dataset folder, an image or a caption cannot be used."""


class CheckpointError(LoraStudioError):
    """A model or LoRA file cannot be read."""


class TrainingError(LoraStudioError):
    """Training had to stop (NaN loss, out of memory, ...)."""


class TrainingCancelled(LoraStudioError):
    """The user cancelled; a resumable state was written."""
