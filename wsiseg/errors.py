"""Exceptions shared by every layer; the CLI turns them into one-line errors."""

from __future__ import annotations

__all__ = [
    "WsisegError",
    "SlideOpenError",
    "SlideReadError",
    "MppError",
    "RegionError",
    "InputError",
]


class WsisegError(Exception):
    """Base class of errors that the CLI reports as one clear line."""


class SlideOpenError(WsisegError):
    """A file could not be opened as a slide (missing, corrupt, unsupported)."""


class SlideReadError(WsisegError):
    """Pixels of an opened slide could not be decoded (corrupt tiles, vanished file)."""


class MppError(WsisegError):
    """The slide's pixel size is missing or implausible and no override was given."""


class RegionError(WsisegError):
    """A requested region lies wholly outside the slide or is malformed."""


class InputError(WsisegError):
    """Any other bad user input (configs, paths, arguments)."""
