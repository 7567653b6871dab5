"""Writing files atomically: a temporary file in the destination's folder,
fsync, then a rename, so a crash never leaves a half-written file under the
final name."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on a clean exit the file
    written there is fsynced and renamed to ``path``, on an exception it is
    removed and ``path`` is left as it was. The file gets the permissions a
    new file would (mkstemp's are 0600).

    An OSError about the temporary file (a missing folder, no permission, a
    full disk) is raised naming ``path``: the temporary name means nothing
    to whoever asked for ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise _naming(e, path, folder) from None
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode())
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename == tmp:
            raise _naming(e, path, folder) from None
        raise


def new_file_mode() -> int:
    """The permissions ``open`` gives a new file under the current umask
    (0644 under umask 022); mkstemp's 0600 would hide outputs from others."""
    mask = os.umask(0)  # the only way to read the umask is to set it
    os.umask(mask)
    return 0o666 & ~mask


def _naming(error: OSError, path: str, folder: str) -> OSError:
    """``error`` again (same class and errno), about ``path``."""
    if error.errno == errno.ENOENT and not os.path.isdir(folder):
        reason = f"the folder {folder} does not exist"
    else:
        reason = error.strerror or str(error)
    return OSError(error.errno, reason, path)  # OSError picks the subclass of the errno


def write_text_atomic(path: PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
