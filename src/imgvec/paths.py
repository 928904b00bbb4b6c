"""File names that are not valid UTF-8, as text that can be stored, printed and turned back into the same file.

Linux names are bytes. Latin-1 or Shift-JIS names copied from old Windows shares are common on a NAS; Python
hands them over with each undecodable byte as a lone surrogate, which SQLite, Arrow, JSON and a terminal all
refuse. Above the file system imgvec therefore holds every path as *text*: a valid UTF-8 name as it is, and any
other with its undecodable bytes written ``\\xNN`` (and its backslashes doubled, so the escape is unambiguous
inside that name). ``fs_path`` turns the text back into the name the file system knows; every ``open``, ``stat``
and ``lexists`` on a stored path goes through it.

One case stays ambiguous: a valid UTF-8 name that spells ``\\xe9`` literally reads back as the escaped form of
another name. Such names cannot come from a Windows share (``\\`` is not allowed there); where one exists on disk,
the literal name wins.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\x[89a-f][0-9a-f]")
"""Only bytes of 0x80 and above are ever undecodable, so only they are escaped."""
_TOKEN = re.compile(r"\\\\|\\x([0-9a-f]{2})")


def to_text(path: str) -> str:
    """A path as the file system gave it (lone surrogates for undecodable bytes) → storable text."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return path


def fs_bytes(text: str) -> bytes:
    """The file system's bytes for a path held as text: what a document id is derived from."""
    if _ESCAPE.search(text) is None:
        return os.fsencode(text)
    raw = _unescape(text)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # only an escaped name unescapes to bytes that are not UTF-8
    return os.fsencode(text)


def fs_path(text: str) -> str:
    """The path to hand to ``open`` or ``stat`` for a path held as text."""
    if _ESCAPE.search(text) is None or os.path.lexists(text):
        return text
    return os.fsdecode(fs_bytes(text))


def _unescape(text: str) -> bytes:
    out = bytearray()
    position = 0
    for match in _TOKEN.finditer(text):
        out += text[position : match.start()].encode("utf-8", "surrogateescape")
        out += b"\\" if match.group(1) is None else bytes([int(match.group(1), 16)])
        position = match.end()
    out += text[position:].encode("utf-8", "surrogateescape")
    return bytes(out)
