"""Errors raised by the engine, each naming what a user must fix."""


class DiffuPrompterError(Exception):
    """Base class of the engine's errors."""


class ModelUnavailableError(DiffuPrompterError):
    """Weights cannot be found or fetched: the message says what and where."""


class InputImageError(DiffuPrompterError, ValueError):
    """An image cannot be used: unreadable, too small, bad dtype or channels."""
