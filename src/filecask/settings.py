"""Settings: one typed, frozen object built from CLI flags > environment > `.env` > defaults.

One table (`SETTINGS`) names every setting once; it drives the environment variable names,
the `serve` flags and their help, the table in docs/settings.md and a test that keeps them in
step. Nothing here reads the environment at import time: `load_settings` is handed it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

ENV_PREFIX = "FILECASK_"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_PATTERN = r"\s*([0-9]{1,20})(?:\.([0-9]{1,9}))?\s*([KMGTkmgt]?)(?:[iI]?[bB])?\s*"
"""What `parse_size` takes (ASCII only), for a whole-string match."""


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


def parse_size(text: str) -> int:
    """Bytes from `10G`, `512M`, `1.5GiB` or a plain number (binary units, as operators expect).
    Exact arithmetic: no float rounding, no overflow. ASCII only: `\\d` alone would
    take any script's digits (ARABIC-INDIC DIGIT ONE then M as 1 MiB), and `upper()` turns
    a dotless i into an I."""
    match = text.isascii() and re.fullmatch(SIZE_PATTERN, text, re.ASCII)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 10G, 512M, 1048576)")
    whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3).upper()
    scale = _SIZE_UNITS[unit]
    denominator = int("1" + "0" * len(fraction))
    return int(whole) * scale + int(fraction or "0") * scale // denominator


def _ascii_int(text: str) -> int:
    """`int()` of plain ASCII digits (with an optional sign and surrounding blanks);
    `int()` alone also takes other scripts' digits and `1_000`."""
    if not (text.isascii() and re.fullmatch(r"\s*[-+]?[0-9]{1,19}\s*", text, re.ASCII)):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)


def parse_count(text: str) -> int:
    """A whole number of at least 1."""
    value = _ascii_int(text)
    if value < 1:
        raise ValueError(f"must be at least 1: {value}")
    return value


def parse_whole(text: str) -> int:
    """A whole number of at least 0."""
    value = _ascii_int(text)
    if value < 0:
        raise ValueError(f"must not be negative: {value}")
    return value


def parse_part_size(text: str) -> int:
    """S3 takes parts of 5 MiB to 5 GiB (the last one may be smaller)."""
    value = parse_size(text)
    if not 5 << 20 <= value <= 5 << 30:
        raise ValueError(f"an S3 part is 5M to 5G: {text!r}")
    return value


def parse_argon2_memory(text: str) -> int:
    value = parse_size(text)
    if value < 64 << 10:
        raise ValueError(f"argon2 needs at least 64K of memory: {text!r}")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts)


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


def parse_positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must not be negative: {value}")
    return value


def parse_duration(text: str) -> float:
    """Seconds from `90`, `30s`, `15m`, `1h` or `7d`."""
    match = text.isascii() and re.fullmatch(
        r"\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*([smhd]?)\s*", text.lower(), re.ASCII
    )
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 7d, 0)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"not a log format: {text!r} (use text or json)")
    return value


def parse_storage(text: str) -> str | None:
    """Empty (the data directory) or `s3://bucket[/prefix]`."""
    text = text.strip()
    if not text:
        return None
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/[^\x00-\x1f]*)?", text)
    if not match:
        raise ValueError(f"not a storage URL: {text!r} (use s3://bucket/prefix, or nothing)")
    return text.rstrip("/")


def parse_optional(text: str) -> str | None:
    return text or None


def parse_optional_path(text: str) -> Path | None:
    return Path(text) if text else None


METRICS_TOKEN_MIN = 16
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
"""RFC 6750 §2.1 b64token: what can follow `Authorization: Bearer`."""


def parse_metrics_token(text: str) -> str | None:
    """A bearer token (RFC 6750 characters), at least METRICS_TOKEN_MIN long: nothing
    slows down guesses of it, so it must be too long to guess. Empty: none."""
    token = text.strip()
    if not token:
        return None
    if not _BEARER_TOKEN.fullmatch(token):
        raise ValueError("a bearer token is letters, digits and -._~+/ (then = padding)")
    if len(token) < METRICS_TOKEN_MIN:
        raise ValueError(
            f"a bearer token has at least {METRICS_TOKEN_MIN} characters"
            " (make one with: openssl rand -hex 32)"
        )
    return token


def parse_metrics_token_file(text: str) -> Path | None:
    """A file holding the token (surrounding whitespace ignored), checked now so a wrong
    path stops `serve` at once; read again when the server starts."""
    if not text:
        return None
    path = Path(text)
    read_metrics_token_file(path)
    return path


def read_metrics_token_file(path: Path) -> str:
    try:
        token = parse_metrics_token(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the metrics token from {path}: {exc}") from None
    if token is None:
        raise ValueError(f"{path} holds no token")
    return token


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "TEXT"
    aliases: tuple[str, ...] = ()
    secret: bool = False
    """Environment only: a command-line flag would show the value in `ps`."""

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "Address to listen on.", "ADDR"),
    Setting("port", parse_port, "TCP port to listen on (0 picks a free one).", "PORT"),
    Setting(
        "workers",
        parse_count,
        "Server processes sharing the port (SO_REUSEPORT); about one per core.",
        "N",
    ),
    Setting("data_dir", Path, "Directory holding store/, tmp/ and filecask.db.", "DIR"),
    Setting(
        "database_url",
        parse_optional,
        "SQLAlchemy URL of the metadata store; default sqlite in the data directory.",
        "URL",
    ),
    Setting(
        "db_pool_size",
        parse_count,
        "Database connections each process keeps open (PostgreSQL).",
        "N",
    ),
    Setting(
        "db_max_overflow",
        parse_whole,
        "Extra database connections a process may open under load (PostgreSQL).",
        "N",
    ),
    Setting(
        "change_poll",
        parse_duration,
        "With PostgreSQL: longest time another instance may act on a cached answer after a"
        " write (a changed password, a deleted file); notifications usually make it ms.",
        "DURATION",
    ),
    Setting(
        "storage",
        parse_storage,
        "Where blobs live: empty for the data directory, or s3://bucket/prefix.",
        "URL",
    ),
    Setting("s3_endpoint_url", parse_optional, "S3 endpoint (MinIO, Ceph RGW); empty: AWS.", "URL"),
    Setting("s3_region", parse_optional, "S3 region (default: us-east-1).", "REGION"),
    Setting("s3_access_key_id", parse_optional, "S3 access key id.", "KEY", secret=True),
    Setting("s3_secret_access_key", parse_optional, "S3 secret access key.", "SECRET", secret=True),
    Setting(
        "s3_presign",
        parse_duration,
        "With S3: answer downloads with a redirect to a presigned URL valid this long"
        " (0: stream through filecask).",
        "DURATION",
    ),
    Setting(
        "s3_part_size",
        parse_part_size,
        "Part size of S3 multipart uploads (5M to 5G); also the memory one upload may hold.",
        "SIZE",
    ),
    Setting(
        "max_upload_size",
        parse_size,
        "Largest accepted upload (413 beyond it), e.g. 10G.",
        "SIZE",
    ),
    Setting(
        "min_free_space",
        parse_size,
        "Free space the store's filesystem keeps; uploads that would eat into it get 507.",
        "SIZE",
    ),
    Setting(
        "admin_password",
        parse_optional,
        "Password for the `admin` user created on first start; random and printed if unset.",
        "PASSWORD",
        secret=True,
    ),
    Setting(
        "public_url",
        parse_optional,
        "Base URL used in `url` and `Location` (default: from the request's Host).",
        "URL",
    ),
    Setting(
        "trusted_proxies",
        parse_networks,
        "Comma-separated addresses/networks whose X-Forwarded-For is believed.",
        "CIDRS",
    ),
    Setting(
        "auth_max_failures",
        parse_count,
        "Failed sign-ins from one address (or for one user name from it) before its attempts"
        " are slowed down (429); failures never slow the right password from elsewhere.",
        "N",
    ),
    Setting(
        "auth_max_delay",
        parse_positive_float,
        "Longest wait, in seconds, imposed after repeated failed sign-ins.",
        "SECONDS",
    ),
    Setting(
        "access_log",
        parse_bool,
        "Write one log line per request.",
        "BOOL",
        aliases=("ACTIVATE_LOGS",),
    ),
    Setting(
        "log_format",
        parse_log_format,
        "Log lines as plain text or as one JSON object each (text, json).",
        "FORMAT",
    ),
    Setting(
        "archive_root",
        parse_optional_path,
        "Directory whose subfolders are served as ZIPs at /archive/<folder>/"
        " (default: archives/ in the data directory).",
        "DIR",
        aliases=("BASE_ARCHIVE_PATH",),
    ),
    Setting(
        "archive_delay",
        parse_positive_float,
        "Seconds to pause between archive chunks, to try slow clients (0: none).",
        "SECONDS",
        aliases=("PROCESS_DELAY",),
    ),
    Setting(
        "file_api",
        parse_bool,
        "Serve the file API (/files, /me, /users, /archives); off leaves archives only.",
        "BOOL",
    ),
    Setting(
        "upload_expiry",
        parse_duration,
        "How long an unfinished resumable (tus) upload is kept before its space is reclaimed.",
        "DURATION",
    ),
    Setting(
        "cache_size",
        parse_size,
        "Memory per worker for the contents of small, often downloaded files (0: none).",
        "SIZE",
    ),
    Setting(
        "header_timeout",
        parse_positive_float,
        "Seconds a client may take to send a request's headers (slowloris guard); 408 after.",
        "SECONDS",
    ),
    Setting(
        "body_timeout",
        parse_positive_float,
        "Seconds a request body may stall between two reads before the upload is dropped (408).",
        "SECONDS",
    ),
    Setting(
        "send_timeout",
        parse_positive_float,
        "Seconds a response may stall with a client that reads nothing before it is dropped.",
        "SECONDS",
    ),
    Setting(
        "keepalive_timeout",
        parse_positive_float,
        "Seconds an idle keep-alive connection stays open.",
        "SECONDS",
    ),
    Setting(
        "max_header_size",
        parse_size,
        "Longest request line or header field; larger ones get 431/400.",
        "SIZE",
    ),
    Setting("argon2_time_cost", parse_count, "argon2id passes per password hash.", "N"),
    Setting(
        "argon2_memory",
        parse_argon2_memory,
        "argon2id memory per password hash, e.g. 64M.",
        "SIZE",
    ),
    Setting("argon2_parallelism", parse_count, "argon2id lanes per password hash.", "N"),
    # Issue 14 §3, no request stalls the event loop: multipart uploads.
    Setting(
        "multipart_max_parts",
        parse_count,
        "Most parts in a multipart upload, its file included; 413 beyond.",
        "N",
    ),
    Setting(
        "multipart_max_form_size",
        parse_size,
        "Most bytes of a multipart upload besides its file (other fields, part headers);"
        " 413 beyond. Other fields also count toward the upload size and the quota.",
        "SIZE",
    ),
    # Issue 14, sign-in (hostile users): argon2 memory bound.
    Setting(
        "auth_memory_budget",
        parse_size,
        "Memory per process that password hashing may take at once: argon2 runs beyond it"
        " (each takes --argon2-memory) wait their turn instead of running in parallel.",
        "SIZE",
    ),
    # Issue 14, input part: who may read /metrics.
    Setting(
        "metrics_public",
        parse_bool,
        "Serve /metrics to anyone; by default only to the metrics token or an administrator.",
        "BOOL",
    ),
    Setting(
        "metrics_token",
        parse_metrics_token,
        "Bearer token a scraper sends to read /metrics (16+ characters, e.g. openssl rand"
        " -hex 32).",
        "TOKEN",
        secret=True,
    ),
    Setting(
        "metrics_token_file",
        parse_metrics_token_file,
        "File holding the /metrics bearer token (a Docker or systemd secret).",
        "FILE",
    ),
    # Issue 14 §1, quotas and disk: what one user may keep alive.
    Setting(
        "max_bundle_entries",
        parse_count,
        "Most files one bundle (POST /archives) may name; more is refused with 413.",
        "N",
    ),
    Setting(
        "max_bundle_size",
        parse_size,
        "Largest bundle manifest (the POST /archives body); larger is refused with 413.",
        "SIZE",
    ),
    Setting(
        "max_bundles_per_user",
        parse_count,
        "Most bundles one user may hold; creating another is refused with 409.",
        "N",
    ),
    Setting(
        "max_open_uploads",
        parse_count,
        "Most unfinished resumable (tus) uploads one user may have; another gets 429.",
        "N",
    ),
    # Issue 14, section 4 (memory per connection) and the Server header: connections.
    Setting(
        "max_head_size",
        parse_size,
        "Largest request head in all (request line and every header field); 431 past it.",
        "SIZE",
    ),
    Setting(
        "max_connections",
        parse_count,
        "Open connections per worker; past it (or the open-file limit) new ones get 503.",
        "N",
    ),
    Setting(
        "max_connections_per_address",
        parse_count,
        "Open connections per client address (IPv6: per /64) and worker; 503 past it."
        " Trusted proxies are exempt.",
        "N",
    ),
    Setting(
        "server_header",
        parse_bool,
        "Send `Server: filecask` (no version) in every response; false sends none.",
        "BOOL",
    ),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Everything filecask can be told; immutable once built."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: Path = Path("data")
    database_url: str | None = None
    db_pool_size: int = 5
    db_max_overflow: int = 10
    change_poll: float = 1.0
    storage: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_presign: float = 0.0
    s3_part_size: int = 8 << 20
    max_upload_size: int = 10 << 30
    min_free_space: int = 64 << 20
    admin_password: str | None = field(default=None, repr=False)
    public_url: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    auth_max_failures: int = 5
    auth_max_delay: float = 60.0
    access_log: bool = True
    log_format: str = "text"
    archive_root: Path | None = None
    archive_delay: float = 0.0
    file_api: bool = True
    upload_expiry: float = 24 * 3600.0
    cache_size: int = 64 << 20
    # nginx's client_header_timeout, client_body_timeout, send_timeout, keepalive_timeout.
    header_timeout: float = 60.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_header_size: int = 8190
    # RFC 9106 §4 second recommended option (argon2-cffi's defaults).
    argon2_time_cost: int = 3
    argon2_memory: int = 64 << 20
    argon2_parallelism: int = 4
    # Issue 14 §3, no request stalls the event loop: multipart uploads.
    multipart_max_parts: int = 100
    multipart_max_form_size: int = 64 << 10
    # Issue 14, sign-in: two default argon2 runs at once (each already uses 4 lanes); a
    # burst of distinct sign-ins queues.
    auth_memory_budget: int = 128 << 20
    # Issue 14, input part: /metrics needs the token or an administrator unless public.
    metrics_public: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    metrics_token_file: Path | None = None
    # Issue 14 §1: a bundle of 10,000 files is a large photo album, and 1 MiB of manifest
    # holds that many short paths; 100 bundles per user (S3's long-standing default of 100
    # buckets per account) and 20 unfinished uploads are more than a person uses, and bound
    # the rows (at most 100 MiB of manifests) and tmp/ files one account can create.
    max_bundle_entries: int = 10_000  # bundles.MAX_ENTRIES
    max_bundle_size: int = 1 << 20  # bundles.MAX_BYTES
    max_bundles_per_user: int = 100
    max_open_uploads: int = 20
    # Issue 14 §4: nginx's large_client_header_buffers (4 x 8k) hold a head of 32 KiB;
    # worker_connections and limit_conn, as a real site would set them.
    max_head_size: int = 32 << 10
    max_connections: int = 4096
    max_connections_per_address: int = 128
    server_header: bool = True

    def __post_init__(self) -> None:
        # Absolute once, here, so nothing later depends on the working directory.
        if not self.data_dir.is_absolute():
            object.__setattr__(self, "data_dir", Path(os.path.abspath(self.data_dir)))
        if self.archive_root is not None and not self.archive_root.is_absolute():
            object.__setattr__(self, "archive_root", Path(os.path.abspath(self.archive_root)))

    @property
    def archives_dir(self) -> Path:
        return self.archive_root if self.archive_root is not None else self.data_dir / "archives"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def locks_dir(self) -> Path:
        return self.data_dir / "locks"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'filecask.db'}"

    @property
    def s3_bucket(self) -> str | None:
        """The bucket of `storage`, or None for the data directory."""
        if self.storage is None:
            return None
        return self.storage.removeprefix("s3://").partition("/")[0]

    @property
    def s3_prefix(self) -> str:
        """The key prefix under the bucket, '' or ending in '/'."""
        if self.storage is None:
            return ""
        prefix = self.storage.removeprefix("s3://").partition("/")[2].strip("/")
        return prefix + "/" if prefix else ""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str],
    env_file: Path | None = Path(".env"),
) -> Settings:
    """Build Settings: `overrides` (CLI flags, already typed or raw strings) win over the
    environment, which wins over the `.env` file, which wins over the defaults."""
    dotenv: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        # The environment beats .env whatever the spelling; within one source the
        # FILECASK_ name beats a legacy alias.
        for source in (environ, dotenv):
            key = next((k for k in (setting.env, *setting.aliases) if k in source), None)
            if key is not None:
                values[setting.name] = _parse(setting, source[key], key)
                break
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        setting = SETTINGS_BY_NAME[name]
        values[name] = _parse(setting, value, setting.flag) if isinstance(value, str) else value
    return Settings(**values)


def _parse(setting: Setting, text: str, source: str) -> Any:
    try:
        return setting.parse(text)
    except (ValueError, OverflowError) as exc:
        raise SettingsError(f"{source}: {exc}") from exc
