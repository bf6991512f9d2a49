"""What a user may call a file: one printable path segment of bounded length.

Names end up in Content-Disposition headers, ZIP entries and listings, so they are
checked once, here, when they enter the system.
"""

from __future__ import annotations

from filecask.errors import InvalidName

NAME_MAX_BYTES = 255


def validate_file_name(name: str) -> str:
    """A file name is what a user calls their copy: one path segment, printable."""
    if not name or name in {".", ".."}:
        raise InvalidName("A file name must not be empty, '.' or '..'.")
    if len(name.encode()) > NAME_MAX_BYTES:
        raise InvalidName(f"A file name has at most {NAME_MAX_BYTES} bytes of UTF-8.")
    if any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName("A file name may not contain '/', '\\' or control characters.")
    return name
