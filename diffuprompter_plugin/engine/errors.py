"""Errors raised by the engine, each naming what a user must fix."""


class DiffuPrompterError(Exception):
    """Base class of the engine's errors."""


class ModelUnavailableError(DiffuPrompterError):
    """Weights cannot be found or fetched: the message says what and where."""


class InputImageError(DiffuPrompterError, ValueError):
    """An image cannot be used: unreadable, too small, bad dtype or channels."""


def gdal_message(error: BaseException) -> str:
    """The message of a rasterio error with GDAL's own messages, which
    rasterio chains as the error's causes (its own text often says no more
    than "See previous exception for details."), outermost first."""
    messages: list[str] = []
    while error is not None and len(messages) < 8:
        text = str(error).replace("See previous exception for details.", "").strip()
        if text and text not in messages:
            messages.append(text)
        error = error.__cause__ or error.__context__
    return "; ".join(messages)
