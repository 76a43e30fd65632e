"""Typed errors of the engine. The CLI and the server turn them into clear messages."""
from __future__ import annotations


class TagError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(TagError):
    """A setting (flag or environment variable) has an invalid value."""


class WeightsNotFoundError(TagError):
    """Pretrained weights were asked for but cannot be found or downloaded."""


class ImageError(TagError):
    """One image cannot be used (unreadable, corrupt, too large, too small, ...)."""
