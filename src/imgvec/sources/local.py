"""A folder on local disk or a mounted NAS share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from imgvec.documents import Failure, SourceItem, extension_of
from imgvec.errors import SourceError
from imgvec.sources.base import IMAGE_EXTENSIONS, OnListingError


class LocalFolder:
    def __init__(self, root: str | os.PathLike[str], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> None:
        path = Path(root).expanduser()
        if not path.exists():
            raise SourceError(f"folder {path} does not exist")
        if not path.is_dir():
            raise SourceError(f"{path} is not a folder")
        self.root = path.resolve()
        self.extensions = extensions

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def scope(self) -> str:
        return str(self.root).rstrip(os.sep) + os.sep

    def scan(self, on_error: OnListingError, under: str | os.PathLike[str] | None = None) -> Iterator[SourceItem]:
        """Depth-first, sorted per folder (stable order for resumes), following symlinked folders once.

        A symlinked folder is followed because NAS layouts use them; each real folder (device, inode) is
        entered at most once, so a link pointing back up the tree cannot loop. ``under``: one subfolder only
        (``watch`` lists a folder that was created or moved in).
        """
        visited: set[tuple[int, int]] = set()
        stack = [Path(under) if under is not None else self.root]
        while stack:
            folder = stack.pop()
            try:
                info = folder.stat()
            except OSError as exc:
                on_error(Failure.listing(str(folder), f"cannot stat folder: {exc.strerror or exc}"))
                continue
            key = (info.st_dev, info.st_ino)
            if key in visited:
                continue
            visited.add(key)
            try:
                with os.scandir(folder) as entries:
                    children = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                on_error(Failure.listing(str(folder), f"cannot list folder: {exc.strerror or exc}"))
                continue
            subfolders = []
            for entry in children:
                try:
                    if entry.is_dir(follow_symlinks=True):
                        subfolders.append(Path(entry.path))
                        continue
                except OSError:
                    pass
                extension = extension_of(entry.name)
                if extension not in self.extensions:
                    continue
                try:
                    stat = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    on_error(Failure.listing(entry.path, f"cannot stat file: {exc.strerror or exc}"))
                    continue
                yield SourceItem.of_path(entry.path, stat.st_size, stat.st_mtime)
            stack.extend(reversed(subfolders))

    def item(self, path: str) -> SourceItem | None:
        """The item for one file now, or None when it is gone, is not a file or is not an image."""
        name = os.path.basename(path)
        extension = extension_of(name)
        if extension not in self.extensions:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if not S_ISREG(stat.st_mode):
            return None
        return SourceItem.of_path(path, stat.st_size, stat.st_mtime)

    def read(self, item: SourceItem) -> bytes:
        with open(item.file_path, "rb") as handle:
            return handle.read()
