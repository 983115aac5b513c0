"""Scenes where they live: URLs that GDAL reads by HTTP range requests.

``https://`` and ``http://`` URLs are read through GDAL's ``/vsicurl/``,
``s3://bucket/key`` through ``/vsis3/`` (:func:`gdal_path`, the one place
that maps them). GDAL fetches only the byte ranges of the blocks a read
touches, so a window costs its blocks and a decimated read of a
cloud-optimised GeoTIFF (COG) costs the overview it is served from.

GDAL's HTTP behaviour is set by its configuration options, read from the
environment. :data:`GDAL_DEFAULTS` applies the defaults below to remote
reads where the environment does not set the option itself (an
environment variable always wins):

- ``GDAL_HTTP_MAX_RETRY`` (3) and ``GDAL_HTTP_RETRY_DELAY`` (1 s, doubled on
  each retry by GDAL): retries of a request answered HTTP 429, 502, 503 or
  504, before a read fails.
- ``GDAL_HTTP_CONNECTTIMEOUT`` (30 s) and ``GDAL_HTTP_TIMEOUT`` (120 s):
  per request.
- ``GDAL_DISABLE_READDIR_ON_OPEN`` (``EMPTY_DIR``): no listing of the
  scene's folder on open to look for side-car files (``.ovr``, ``.aux.xml``),
  which costs a request per scene, fails on most object stores, and is
  refused by signed URLs.

Other options are GDAL's own and left to the user: ``VSI_CACHE`` /
``VSI_CACHE_SIZE`` (a per-file cache of read ranges),
``CPL_VSIL_CURL_CACHE_SIZE`` (the global cache of downloaded chunks, 16 MB
by default), ``CPL_VSIL_CURL_CHUNK_SIZE``, ``GDAL_HTTP_PROXY``; for S3 the
credentials ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN`` (or ``AWS_PROFILE``, or ``AWS_NO_SIGN_REQUEST=YES``
for public buckets), ``AWS_REGION``, and for S3-compatible servers
(MinIO, Ceph, moto) ``AWS_S3_ENDPOINT`` (``host:port``), ``AWS_HTTPS=NO``
for plain HTTP and ``AWS_VIRTUAL_HOSTING=FALSE`` for path-style addresses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from urllib.parse import urlsplit

from .errors import InputImageError, gdal_message

VSI_PREFIXES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/"}
"""URL scheme -> the GDAL virtual file system that reads it."""

GDAL_DEFAULTS = {
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
    "GDAL_HTTP_TIMEOUT": "120",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}
"""GDAL options for remote reads, where the environment does not set them."""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL GDAL reads remotely (``http(s)://``,
    ``s3://``) or already a ``/vsicurl/`` or ``/vsis3/`` path."""
    text = os.fspath(path)
    return urlsplit(text).scheme.lower() in VSI_PREFIXES or text.startswith(
        tuple(set(VSI_PREFIXES.values()))
    )


def gdal_path(path: str | os.PathLike) -> str:
    """What GDAL opens for ``path``: ``https://host/a.tif`` ->
    ``/vsicurl/https://host/a.tif``, ``s3://bucket/a.tif`` ->
    ``/vsis3/bucket/a.tif``; anything else unchanged."""
    text = os.fspath(path)
    scheme = urlsplit(text).scheme.lower()
    if scheme == "s3":
        return VSI_PREFIXES["s3"] + text[len("s3://") :]
    if scheme in VSI_PREFIXES:
        return VSI_PREFIXES[scheme] + text
    return text


def display_name(path: str | os.PathLike) -> str:
    """A short name for a scene: the file name without its extension, for a
    URL without its query (a signed URL's signature)."""
    text = os.fspath(path)
    name = urlsplit(text).path if is_remote(text) else text
    return os.path.splitext(os.path.basename(name.rstrip("/")))[0] or "scene"


def remote_env() -> AbstractContextManager:
    """A ``rasterio.Env`` with :data:`GDAL_DEFAULTS` for the options the
    environment does not set."""
    import rasterio

    return rasterio.Env(**{k: v for k, v in GDAL_DEFAULTS.items() if k not in os.environ})


class RemoteReadError(InputImageError):
    """A remote scene could not be read (after GDAL's retries): a network
    error or a server's refusal. The message names the URL; the sample
    fails, and resuming the run retries it."""


class _Collect(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def gdal_messages() -> Iterator[list[str]]:
    """The warnings GDAL reports while the block runs (rasterio logs them
    to ``rasterio._err``), such as an HTTP answer's status, which the error
    rasterio raises afterwards does not repeat."""
    messages: list[str] = []
    handler = _Collect(messages)
    logger = logging.getLogger("rasterio._err")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def read_error(
    path: str, what: str, error: Exception, messages: Sequence[str] = ()
) -> RemoteReadError:
    """The error of a failed remote read of ``what`` (e.g. a window) of
    ``path``: GDAL's last HTTP message (see :func:`gdal_messages`), else
    the messages rasterio chained as the error's causes."""
    http = [m for m in messages if "response_code" in m or "HTTP" in m]
    reason = http[-1] if http else gdal_message(error)
    return RemoteReadError(
        f"Cannot read {what} of '{path}' over the network ({reason}); the sample fails and "
        "resuming the run retries it (see GDAL_HTTP_MAX_RETRY, GDAL_HTTP_TIMEOUT)"
    )
