"""Reading saved files safely: regular files of a bounded size, or one clear error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: The largest ``config.json`` (or reference ``metadata.yaml``) read; a build's history
#: of a billion tokens stays well below it.
MAX_CONFIG_BYTES = 64 << 20


class FormatError(ValueError):
    """A saved dictionary that is missing, corrupted or of another format."""


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file (links followed) of at most
    ``max_bytes``; otherwise a :class:`FormatError`. A FIFO, a device (a link to
    ``/dev/zero``) or a folder is refused without reading from it, so it cannot block
    or stream without end."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise FormatError(f"cannot read {path}: {err.strerror}.") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f"{path} is not a regular file (a FIFO, a device or a folder); put the saved file there.")
        if info.st_size > max_bytes:
            raise FormatError(f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} bytes this file may have; it is not the saved file.")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        data = file.read(info.st_size + 1)  # one byte more: a file still growing is refused
    if len(data) != info.st_size:
        raise FormatError(f"{path} changed while it was read; read it again once nothing writes to it.")
    return data
