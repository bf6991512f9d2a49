"""What scripts and shells may rely on from the client: the environment variables it reads
and its exit codes. Free of aiohttp, so `filecask <command> --help` (whose text names them)
loads no HTTP code."""

from __future__ import annotations

import enum

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "FILECASK_URL"
USER_ENV = "FILECASK_USER"
PASSWORD_ENV = "FILECASK_PASSWORD"  # noqa: S105 (a variable's name, not a password)
CLIENT_ENV = (URL_ENV, USER_ENV, PASSWORD_ENV)


class ExitCode(enum.IntEnum):
    """What a script can rely on; documented in docs/cli.md and in each command's --help."""

    OK = 0
    LOCAL = 1
    """Usage or local error: bad arguments, unreadable file, unusable ~/.netrc."""
    NOT_FOUND = 2
    """404: no such file or bundle."""
    AUTH = 3
    """401/403: wrong or missing credentials, or not permitted."""
    REFUSED = 4
    """Any other 4xx: bad request, conflict, too large / over quota (413), bad range."""
    SERVER = 5
    """5xx, connection refused, timeout, a cut transfer, or a download whose bytes do not
    have the hash asked for."""
