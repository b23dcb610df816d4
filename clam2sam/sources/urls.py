"""Store and source locations given as fsspec-style URLs.

Supported (tested): plain paths and local ``file://`` URLs (``file:///abs/path``, ``file://localhost/abs/path``,
``file:/abs/path``); they become local :class:`~pathlib.Path` objects before anything is opened, because
h5py opens only local paths (its ``ros3`` driver is not in the PyPI wheels) and the converter's lock, resume
checks and consolidation are filesystem operations.

Not supported: remote schemes (``s3://``, ``gs://``, ``az://``, ``abfs://``, ``http(s)://``, ``hdfs://``...).
They are refused with a message that names the way round it: mount the bucket (mountpoint-s3, s3fs-fuse,
gcsfuse, blobfuse2) at the same path on the client and every worker, or convert onto local/shared disk and
upload the finished store (``aws s3 sync cohort.zarr s3://bucket/cohort.zarr``). A finished store can be read
straight from object storage with zarr itself (``zarr.open_group("s3://...", mode="r")``), which needs
``fsspec`` plus the scheme's package (``s3fs``, ``gcsfs``, ``adlfs``): not installed here, untested.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from clam2sam.errors import UsageError

LOCAL_SCHEMES = ("file", "local")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # 2+ chars: a Windows drive letter is not a scheme


def url_scheme(value: str | os.PathLike) -> str | None:
    """The URL scheme of ``value`` (lower case), or None for a plain path."""
    if isinstance(value, Path):
        return None
    m = _SCHEME.match(os.fspath(value))
    return m.group(1).lower() if m else None


def local_path(value: str | os.PathLike, *, what: str = "path") -> Path:
    """A plain path or ``file://`` URL as a local Path; refuse remote URLs with a clear fix.

    Args:
        value: ``/data/x``, ``rel/x``, ``file:///data/x``, ``file://localhost/data/x``, ``file:/data/x`` or
            a :class:`Path` (returned as is).
        what: what the value is (``"--out"``, ``"ARCHIVE"``), for the error message.

    Raises:
        UsageError: a remote scheme (``s3://``...) or a ``file://`` URL naming another host.
    """
    if isinstance(value, Path):
        return value
    text = os.fspath(value)
    scheme = url_scheme(text)
    if scheme is None:
        return Path(text)
    if scheme not in LOCAL_SCHEMES:
        raise UsageError(
            f"{what} {text!r}: {scheme}:// URLs are not supported (only local paths and file:// URLs)",
            fix="mount the bucket at the same path on every machine (mountpoint-s3, s3fs-fuse, gcsfuse) and pass "
                "that path, or convert to local/shared disk and upload the store afterwards (see docs/cluster.md)")
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"{what} {text!r}: file:// URL names host {parts.netloc!r}",
                         fix="write file:///absolute/path (three slashes) or a plain path")
    path = unquote(parts.path)
    if not path:
        raise UsageError(f"{what} {text!r}: empty path in URL", fix="write file:///absolute/path")
    return Path(path)

