"""A folder on local disk or a mounted NAS share."""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Iterator
from pathlib import Path

from imgvec.documents import Failure, SourceItem, extension_of
from imgvec.errors import SourceError
from imgvec.paths import fs_path, to_text
from imgvec.sources.base import IMAGE_EXTENSIONS, OnListingError

READ_MARGIN = 1 << 20
"""Bytes a file may have grown by between its stat and its read; past that it is still being written."""


class LocalFolder:
    def __init__(
        self,
        root: str | os.PathLike[str],
        extensions: frozenset[str] = IMAGE_EXTENSIONS,
        *,
        follow_external: bool = False,
    ) -> None:
        path = Path(root).expanduser()
        if not path.exists():
            raise SourceError(f"folder {to_text(str(path))} does not exist")
        if not path.is_dir():
            raise SourceError(f"{to_text(str(path))} is not a folder")
        self.root = path.resolve()
        self.extensions = extensions
        self.follow_external = follow_external
        """Follow symlinks that lead out of the folder. Off by default: a link to ``/`` would index the machine."""

    @property
    def location(self) -> str:
        return to_text(str(self.root))

    @property
    def scope(self) -> str:
        return self.location.rstrip(os.sep) + os.sep

    def scan(self, on_error: OnListingError, under: str | os.PathLike[str] | None = None) -> Iterator[SourceItem]:
        """Depth-first, sorted per folder (stable order for resumes), following symlinked folders once.

        A symlinked folder is followed because NAS layouts use them; each real folder (device, inode) is
        entered at most once, so a link pointing back up the tree cannot loop. A link that leads out of the
        folder, and anything that is not a regular file (a FIFO, a socket, a device), is one listing failure
        with its reason. ``under``: one subfolder only (``watch`` lists a folder that was created or moved in).
        """
        visited: set[tuple[int, int]] = set()
        stack = [Path(under) if under is not None else self.root]
        while stack:
            folder = stack.pop()
            try:
                info = folder.stat()
            except OSError as exc:
                on_error(Failure.listing(to_text(str(folder)), f"cannot stat folder: {exc.strerror or exc}"))
                continue
            key = (info.st_dev, info.st_ino)
            if key in visited:
                continue
            visited.add(key)
            try:
                with os.scandir(folder) as entries:
                    children = sorted(entries, key=lambda e: os.fsencode(e.name))
            except OSError as exc:
                on_error(Failure.listing(to_text(str(folder)), f"cannot list folder: {exc.strerror or exc}"))
                continue
            subfolders = []
            for entry in children:
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if not is_dir and extension_of(entry.name) not in self.extensions:
                    continue
                if entry.is_symlink() and not self.follow_external and (outside := self._outside(entry.path)):
                    on_error(Failure.listing(to_text(entry.path), outside))
                    continue
                if is_dir:
                    subfolders.append(Path(entry.path))
                    continue
                try:
                    found = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    on_error(Failure.listing(to_text(entry.path), f"cannot stat file: {exc.strerror or exc}"))
                    continue
                if not stat_module.S_ISREG(found.st_mode):
                    on_error(Failure.listing(to_text(entry.path), not_regular(found.st_mode)))
                    continue
                yield SourceItem.of_path(entry.path, found.st_size, found.st_mtime)
            stack.extend(reversed(subfolders))

    def _outside(self, path: str) -> str | None:
        """Why a symlink is not followed, or None when it stays inside the folder."""
        target = os.path.realpath(path)
        root = str(self.root)
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            return None
        return (
            f"symlink to {to_text(target)}, outside {self.location}: not followed "
            "(--follow-external follows links that leave the folder)"
        )

    def item(self, path: str) -> SourceItem | None:
        """The item for one file now (``path`` as text), or None when it is gone, is not a regular file or is not
        an image."""
        name = os.path.basename(path)
        if extension_of(name) not in self.extensions:
            return None
        on_disk = fs_path(path)
        try:
            found = os.stat(on_disk)
        except OSError:
            return None
        if not stat_module.S_ISREG(found.st_mode):
            return None
        return SourceItem.of_path(on_disk, found.st_size, found.st_mtime)

    def read(self, item: SourceItem) -> bytes:
        return read_regular_file(item.file_path)


def read_regular_file(path: str) -> bytes:
    """A regular file's bytes (``path`` as text). Opened without blocking, so a FIFO that took an image's name
    cannot hang the read, and never read past its size plus ``READ_MARGIN``, so a device cannot fill memory."""
    fd = os.open(fs_path(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        found = os.fstat(fd)
        if not stat_module.S_ISREG(found.st_mode):
            raise OSError(f"{not_regular(found.st_mode)}")
        os.set_blocking(fd, True)
        limit = found.st_size + READ_MARGIN
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 16 << 20))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise OSError(f"the file grew by over {READ_MARGIN >> 20} MiB while it was read: still being written?")
    finally:
        os.close(fd)


def not_regular(mode: int) -> str:
    kinds = {
        stat_module.S_ISFIFO: "a FIFO (named pipe)",
        stat_module.S_ISSOCK: "a socket",
        stat_module.S_ISCHR: "a character device",
        stat_module.S_ISBLK: "a block device",
        stat_module.S_ISDIR: "a folder",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"not a regular file: {kind}; only regular files are read"
