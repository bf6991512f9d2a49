"""Settings: defaults, `.env` < environment < overrides, value parsing, and the one table
that drives flags, environment names and help."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filecask.settings import (
    ENV_PREFIX,
    SETTINGS,
    SETTINGS_BY_NAME,
    Setting,
    Settings,
    SettingsError,
    load_settings,
    parse_bool,
    parse_count,
    parse_duration,
    parse_metrics_token,
    parse_networks,
    parse_size,
    parse_whole,
    read_metrics_token_file,
)

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{ENV_PREFIX}{k.upper()}={v}\n" for k, v in values.items()))
    return path


# --- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    s = load_settings(environ={}, env_file=None)
    assert s == Settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.data_dir == Path.cwd() / "data"
    assert s.database_url is None
    assert s.max_upload_size == 10 * GIB
    assert s.admin_password is None
    assert s.public_url is None
    assert s.trusted_proxies == ()
    assert s.auth_max_failures == 5
    assert s.auth_max_delay == 60.0
    assert s.access_log is True
    # argon2-cffi's defaults, RFC 9106 §4's second recommended option.
    assert (s.argon2_time_cost, s.argon2_memory, s.argon2_parallelism) == (3, 64 * MIB, 4)


def test_derived_paths_live_in_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.store_dir == tmp_path / "store"
    assert s.tmp_dir == tmp_path / "tmp"
    assert s.locks_dir == tmp_path / "locks"
    assert s.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'filecask.db'}"


def test_database_url_wins_over_the_default_sqlite_file(tmp_path: Path) -> None:
    url = "postgresql://db.example/filecask"
    assert Settings(data_dir=tmp_path, database_url=url).effective_database_url == url


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_admin_password_is_not_in_repr() -> None:
    assert "hunter2-secret" not in repr(Settings(admin_password="hunter2-secret"))


def test_data_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings(data_dir=Path("relative/dir"))
    assert s.data_dir.is_absolute()
    assert s.data_dir == tmp_path / "relative" / "dir"
    # Still absolute, and unchanged, after moving elsewhere and after replace().
    monkeypatch.chdir("/")
    assert s.replace(port=1).data_dir == tmp_path / "relative" / "dir"
    from_env = load_settings(environ={"FILECASK_DATA_DIR": "x"}, env_file=None)
    assert from_env.data_dir == Path("/x")


def test_data_dir_given_as_text_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings({"data_dir": "here"}, environ={}, env_file=None)
    assert s.data_dir == tmp_path / "here"


def test_replace_returns_a_new_object() -> None:
    s = Settings()
    t = s.replace(port=9000)
    assert t.port == 9000
    assert s.port == 8080


# --- precedence ---------------------------------------------------------------------------


def test_dotenv_beats_defaults(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", port="1111", host="0.0.0.0")
    s = load_settings(environ={}, env_file=env_file)
    assert s.port == 1111
    assert s.host == "0.0.0.0"


def test_env_beats_dotenv(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", port="1111", host="0.0.0.0")
    s = load_settings(environ={"FILECASK_PORT": "2222"}, env_file=env_file)
    assert s.port == 2222
    assert s.host == "0.0.0.0"  # not given in the environment: .env still applies


def test_overrides_beat_env_and_dotenv(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", port="1111", max_upload_size="1M")
    s = load_settings(
        {"port": "3333"},
        environ={"FILECASK_PORT": "2222", "FILECASK_MAX_UPLOAD_SIZE": "2M"},
        env_file=env_file,
    )
    assert s.port == 3333
    assert s.max_upload_size == 2 * MIB


def test_none_overrides_are_ignored() -> None:
    """Click passes None for flags not given; they must not hide the environment."""
    s = load_settings(
        {"port": None, "host": None}, environ={"FILECASK_PORT": "2222"}, env_file=None
    )
    assert s.port == 2222
    assert s.host == "127.0.0.1"


def test_typed_overrides_are_used_as_they_are(tmp_path: Path) -> None:
    s = load_settings({"port": 4444, "data_dir": tmp_path}, environ={}, env_file=None)
    assert s.port == 4444
    assert s.data_dir == tmp_path


def test_string_overrides_are_parsed() -> None:
    s = load_settings({"max_upload_size": "3K", "access_log": "no"}, environ={}, env_file=None)
    assert s.max_upload_size == 3 * KIB
    assert s.access_log is False


def test_missing_env_file_is_fine(tmp_path: Path) -> None:
    assert load_settings(environ={}, env_file=tmp_path / "absent.env") == Settings()


def test_dotenv_in_working_directory_is_read_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_env(tmp_path / ".env", port="5555")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).port == 5555


def test_unprefixed_and_unknown_variables_are_ignored() -> None:
    s = load_settings(environ={"PORT": "1", "FILECASK_NOPE": "x"}, env_file=None)
    assert s == Settings()


METRICS_TOKEN_FILE = Path(tempfile.mkdtemp(prefix="filecask-settings-")) / "metrics-token"
METRICS_TOKEN_FILE.write_text("token-from-a-file-0123456789\n")
"""A token file must exist when the setting is read (a wrong path stops `serve` at once)."""

SAMPLES: dict[str, tuple[str, Any]] = {
    "host": ("::1", "::1"),
    "port": ("0", 0),
    "data_dir": ("/srv/filecask", Path("/srv/filecask")),
    "database_url": ("sqlite:///x.db", "sqlite:///x.db"),
    "max_upload_size": ("5M", 5 * MIB),
    "admin_password": ("pw-from-env", "pw-from-env"),
    "public_url": ("https://files.example", "https://files.example"),
    "trusted_proxies": ("10.0.0.0/8", (ipaddress.ip_network("10.0.0.0/8"),)),
    "auth_max_failures": ("7", 7),
    "auth_max_delay": ("1.5", 1.5),
    "access_log": ("off", False),
    "archive_root": ("/srv/archives", Path("/srv/archives")),
    "archive_delay": ("0.25", 0.25),
    "file_api": ("no", False),
    "argon2_time_cost": ("2", 2),
    "argon2_memory": ("8M", 8 * MIB),
    "argon2_parallelism": ("1", 1),
    "workers": ("4", 4),
    "cache_size": ("0", 0),
    "min_free_space": ("1G", 1 << 30),
    "log_format": ("JSON", "json"),
    "upload_expiry": ("2h", 7200.0),
    "header_timeout": ("5", 5.0),
    "body_timeout": ("2.5", 2.5),
    "send_timeout": ("30", 30.0),
    "keepalive_timeout": ("10", 10.0),
    "max_header_size": ("16K", 16 << 10),
    "db_pool_size": ("20", 20),
    "db_max_overflow": ("0", 0),
    "change_poll": ("2s", 2.0),
    "storage": ("s3://files-bucket/prod/", "s3://files-bucket/prod"),
    "s3_endpoint_url": ("http://minio:9000", "http://minio:9000"),
    "s3_region": ("eu-west-1", "eu-west-1"),
    "s3_access_key_id": ("AKIAEXAMPLE", "AKIAEXAMPLE"),
    "s3_secret_access_key": ("s3-secret-from-env", "s3-secret-from-env"),
    "s3_presign": ("5m", 300.0),
    "s3_part_size": ("16M", 16 * MIB),
    "multipart_max_parts": ("20", 20),
    "multipart_max_form_size": ("16K", 16 << 10),
    "auth_memory_budget": ("128M", 128 * MIB),
    # Issue 14, input part.
    "metrics_public": ("yes", True),
    "metrics_token": (" scrape-token-0123456789 ", "scrape-token-0123456789"),
    "metrics_token_file": (str(METRICS_TOKEN_FILE), METRICS_TOKEN_FILE),
    # Issue 14 §1: quotas and disk.
    "max_bundle_entries": ("500", 500),
    "max_bundle_size": ("64K", 64 << 10),
    "max_bundles_per_user": ("10", 10),
    "max_open_uploads": ("3", 3),
    "max_head_size": ("64K", 64 << 10),
    "max_connections": ("10000", 10000),
    "max_connections_per_address": ("16", 16),
    "server_header": ("false", False),
}
"""For each setting: a text an operator might write, and the value it means."""


def test_every_setting_has_a_sample_here() -> None:
    """A new setting comes with a line in SAMPLES, so the tests below cover it."""
    assert {s.name for s in SETTINGS} <= set(SAMPLES)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_can_come_from_environment_dotenv_and_flag(
    setting: Setting, tmp_path: Path
) -> None:
    text, expected = SAMPLES[setting.name]
    from_env = load_settings(environ={setting.env: text}, env_file=None)
    assert getattr(from_env, setting.name) == expected
    env_file = tmp_path / ".env"
    env_file.write_text(f"{setting.env}={text}\n")
    assert getattr(load_settings(environ={}, env_file=env_file), setting.name) == expected
    from_flag = load_settings({setting.name: text}, environ={}, env_file=None)
    assert getattr(from_flag, setting.name) == expected
    # Nothing else changed.
    assert dataclasses.replace(from_env, **{setting.name: getattr(Settings(), setting.name)}) == (
        Settings()
    )


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.aliases], ids=lambda s: s.name)
def test_aliases_are_read_but_the_prefixed_name_wins(setting: Setting) -> None:
    text, expected = SAMPLES[setting.name]
    for alias in setting.aliases:
        s = load_settings(environ={alias: text}, env_file=None)
        assert getattr(s, setting.name) == expected
        both = load_settings(environ={alias: "junk-not-parsed", setting.env: text}, env_file=None)
        assert getattr(both, setting.name) == expected


def test_env_alias_beats_dotenv(tmp_path: Path) -> None:
    """The environment wins over `.env`, whichever of a setting's names each one uses."""
    setting = SETTINGS_BY_NAME["access_log"]
    env_file = tmp_path / ".env"
    env_file.write_text(f"{setting.env}=on\n")
    for alias in setting.aliases:
        s = load_settings(environ={alias: "off"}, env_file=env_file)
        assert s.access_log is False, alias


def test_empty_optional_values_mean_unset() -> None:
    s = load_settings(
        environ={"FILECASK_DATABASE_URL": "", "FILECASK_PUBLIC_URL": ""}, env_file=None
    )
    assert s.database_url is None
    assert s.public_url is None


# --- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10G", 10 * GIB),
        ("512M", 512 * MIB),
        ("1.5G", GIB + GIB // 2),
        ("1048576", 1048576),
        ("0", 0),
        ("64K", 64 * KIB),
        ("2T", 2 * TIB),
        ("10g", 10 * GIB),
        ("1.5GiB", GIB + GIB // 2),
        ("512MB", 512 * MIB),
        (" 7 M ", 7 * MIB),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "G", "ten", "-1", "1.5.5G", "10X", "1e9", "10 G B", "0x10", "1,000", "9" * 400]
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_parse_size_plain_integer_is_exact(n: int) -> None:
    assert parse_size(str(n)) == n


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["K", "M", "G", "T"]))
def test_parse_size_whole_units(n: int, unit: str) -> None:
    multiplier = {"K": KIB, "M": MIB, "G": GIB, "T": TIB}[unit]
    assert parse_size(f"{n}{unit}") == n * multiplier
    assert parse_size(f"{n}{unit.lower()}ib") == n * multiplier


@given(st.text(max_size=30))
def test_parse_size_returns_bytes_or_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int)
    assert size >= 0


NON_ASCII_DIGITS = [
    c for c in map(chr, range(0x80, 0x30000)) if unicodedata.decimal(c, None) is not None
]
"""Every digit of another script (and the fullwidth ones): `\\d` and `int()` take them."""


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "K", "M", "G", "KiB"]),
    st.data(),
)
def test_sizes_counts_and_durations_take_only_ascii_digits(n: int, unit: str, data: Any) -> None:
    """Issue 14: `"\u0661M"` (ARABIC-INDIC DIGIT ONE) was a 1 MiB quota. Any one digit of
    a valid number replaced by another script's digit of the same value is refused."""
    text = str(n)
    at = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    digit = data.draw(
        st.sampled_from([c for c in NON_ASCII_DIGITS if unicodedata.decimal(c) == int(text[at])])
    )
    foreign = text[:at] + digit + text[at + 1 :]
    assert parse_size(text + unit) >= 0  # the ASCII original is fine
    for parse, suffix in ((parse_size, unit), (parse_duration, "s"), (parse_whole, "")):
        with pytest.raises(ValueError, match="not a"):
            parse(foreign + suffix)
    with pytest.raises(ValueError, match="not a whole number"):
        parse_count(foreign)


@given(st.text(min_size=1, max_size=12).filter(lambda t: not t.isascii()))
def test_any_non_ascii_size_is_refused(text: str) -> None:
    for parse in (parse_size, parse_duration, parse_count, parse_whole):
        with pytest.raises(ValueError, match="not a"):
            parse(text)


@pytest.mark.parametrize("text", ["10\u0131b", "1\u017f", "1_000", "\u00a010M"])
def test_case_folding_and_underscores_do_not_sneak_in(text: str) -> None:
    """A dotless i upper-cases to I (`10<dotless i>b` would read as `10IB`), a long s to S,
    and `int("1_000")` is 1000."""
    for parse in (parse_size, parse_count, parse_whole):
        with pytest.raises(ValueError, match="not a"):
            parse(text)


@pytest.mark.parametrize("bad", ["lots", "-5M", "9" * 400, "\u0661M"])
def test_bad_size_in_environment_names_the_variable(bad: str) -> None:
    with pytest.raises(SettingsError, match="FILECASK_MAX_UPLOAD_SIZE"):
        load_settings(environ={"FILECASK_MAX_UPLOAD_SIZE": bad}, env_file=None)


def test_bad_size_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / ".env", max_upload_size="huge")
    with pytest.raises(SettingsError, match="FILECASK_MAX_UPLOAD_SIZE"):
        load_settings(environ={}, env_file=env_file)


def test_bad_size_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--max-upload-size"):
        load_settings({"max_upload_size": "huge"}, environ={}, env_file=None)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize(
    ("name", "env", "flag", "bad"),
    [
        ("port", "FILECASK_PORT", "--port", "70000"),
        ("port", "FILECASK_PORT", "--port", "http"),
        ("auth_max_failures", "FILECASK_AUTH_MAX_FAILURES", "--auth-max-failures", "five"),
        ("auth_max_delay", "FILECASK_AUTH_MAX_DELAY", "--auth-max-delay", "-1"),
        ("access_log", "FILECASK_ACCESS_LOG", "--access-log", "maybe"),
        ("trusted_proxies", "FILECASK_TRUSTED_PROXIES", "--trusted-proxies", "10.0.0.0/33"),
        ("trusted_proxies", "FILECASK_TRUSTED_PROXIES", "--trusted-proxies", "proxy.local"),
    ],
)
def test_bad_values_name_their_source(name: str, env: str, flag: str, bad: str) -> None:
    with pytest.raises(SettingsError, match=env):
        load_settings(environ={env: bad}, env_file=None)
    with pytest.raises(SettingsError, match=flag):
        load_settings({name: bad}, environ={}, env_file=None)


@pytest.mark.parametrize(
    ("env", "bad"),
    [
        ("FILECASK_ARGON2_TIME_COST", "0"),
        ("FILECASK_ARGON2_PARALLELISM", "0"),
        ("FILECASK_ARGON2_MEMORY", "0"),
        ("FILECASK_AUTH_MAX_FAILURES", "-3"),
    ],
)
def test_unusable_numbers_are_refused_when_loading(env: str, bad: str) -> None:
    """Refused up front, naming the variable, rather than failing later inside argon2
    ("HashingError: Time cost is too small") or the limiter."""
    with pytest.raises(SettingsError, match=env):
        load_settings(environ={env: bad}, env_file=None)


# --- booleans -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "True", "yes", "on", " on "])
def test_parse_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off", "", "  "])
def test_parse_bool_false(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["maybe", "2", "y", "enabled", "tru"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_bool(text)


# --- trusted proxies ----------------------------------------------------------------------


def test_trusted_proxies_cidr_list() -> None:
    s = load_settings(
        environ={"FILECASK_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1 ,fd00::/8,,"},
        env_file=None,
    )
    assert s.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert ipaddress.ip_address("10.20.30.40") in s.trusted_proxies[0]


def test_trusted_proxies_host_bits_are_tolerated() -> None:
    assert parse_networks("10.1.2.3/8") == (ipaddress.ip_network("10.0.0.0/8"),)


def test_trusted_proxies_empty() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" , ") == ()


# --- the one table ------------------------------------------------------------------------


def test_settings_table_and_dataclass_agree() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    assert set(names) == fields
    assert set(SETTINGS_BY_NAME) == fields


def test_only_the_secrets_are_environment_only() -> None:
    """A secret given as a flag would show in `ps`."""
    assert {s.name for s in SETTINGS if s.secret} == {
        "admin_password",
        "s3_access_key_id",
        "s3_secret_access_key",
        "metrics_token",
    }


def test_every_setting_has_help_env_and_flag() -> None:
    for setting in SETTINGS:
        assert setting.help.strip(), setting.name
        assert setting.metavar.strip(), setting.name
        assert setting.env == ENV_PREFIX + setting.name.upper()
        assert setting.flag == "--" + setting.name.replace("_", "-")
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert len({s.flag for s in SETTINGS}) == len(SETTINGS)


def test_every_default_survives_its_own_parser() -> None:
    """Writing a default back as text (as an operator would) gives the default again."""
    defaults = Settings()
    for setting in SETTINGS:
        default = getattr(defaults, setting.name)
        if default is None or setting.name == "trusted_proxies":
            continue
        text = str(default)
        parsed = setting.parse(text)
        if isinstance(default, Path):
            assert Path(os.path.abspath(parsed)) == default, setting.name
        else:
            assert parsed == default, setting.name


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("s3://files", "files", ""),
        ("s3://files/", "files", ""),
        ("s3://files/a/b/", "files", "a/b/"),
        ("s3://my.files-1/prod", "my.files-1", "prod/"),
    ],
)
def test_storage_url_gives_bucket_and_prefix(text: str, bucket: str, prefix: str) -> None:
    settings = load_settings(environ={"FILECASK_STORAGE": text}, env_file=None)
    assert (settings.s3_bucket, settings.s3_prefix) == (bucket, prefix)


@pytest.mark.parametrize(
    "text", ["files", "s3://", "s3://UPPER", "s3://a", "gs://files", "s3://files/\x01"]
)
def test_storage_url_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(SettingsError, match="FILECASK_STORAGE"):
        load_settings(environ={"FILECASK_STORAGE": text}, env_file=None)


@pytest.mark.parametrize("text", ["4M", "6G"])
def test_s3_part_size_outside_what_s3_takes_is_refused(text: str) -> None:
    with pytest.raises(SettingsError, match="FILECASK_S3_PART_SIZE"):
        load_settings(environ={"FILECASK_S3_PART_SIZE": text}, env_file=None)


def test_s3_secrets_never_show_in_repr() -> None:
    settings = Settings(s3_access_key_id="AKIA-hidden", s3_secret_access_key="hidden-secret")
    assert "hidden" not in repr(settings)


# --- /metrics access (issue 14, input part) -------------------------------------------------


def test_metrics_are_not_public_by_default() -> None:
    s = Settings()
    assert s.metrics_public is False
    assert s.metrics_token is None
    assert s.metrics_token_file is None


def test_metrics_token_is_not_in_repr() -> None:
    assert "scrape-secret" not in repr(Settings(metrics_token="scrape-secret-0123456789"))


@pytest.mark.parametrize(
    "bad",
    [
        "short",
        "fifteen-chars-x",
        "has space inside it",
        "t\u00f6ken-with-umlaut-0123",
        "a=b-0123456789abcd",
    ],
)
def test_metrics_token_must_be_a_long_bearer_token(bad: str) -> None:
    with pytest.raises(ValueError, match="token"):
        parse_metrics_token(bad)
    with pytest.raises(SettingsError, match="FILECASK_METRICS_TOKEN"):
        load_settings(environ={"FILECASK_METRICS_TOKEN": bad}, env_file=None)


def test_metrics_token_accepts_base64_and_hex() -> None:
    assert parse_metrics_token("0123456789abcdef") == "0123456789abcdef"
    assert parse_metrics_token("QUJDREVGR0hJSktMTU5PUA==") == "QUJDREVGR0hJSktMTU5PUA=="
    assert parse_metrics_token("") is None


def test_metrics_token_file_that_cannot_be_used_is_refused_when_loading(tmp_path: Path) -> None:
    missing, empty, short = tmp_path / "missing", tmp_path / "empty", tmp_path / "short"
    empty.write_text("\n")
    short.write_text("abc\n")
    for path in (missing, empty, short):
        with pytest.raises(SettingsError, match="FILECASK_METRICS_TOKEN_FILE"):
            load_settings(environ={"FILECASK_METRICS_TOKEN_FILE": str(path)}, env_file=None)
    assert read_metrics_token_file(METRICS_TOKEN_FILE) == "token-from-a-file-0123456789"
