"""Operating `filecask serve`: the first-start admin banner, where settings come from, and
how it fails when it cannot start."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.e2e.conftest import (
    ADMIN_PASSWORD,
    Curl,
    Server,
    StartServer,
    free_port,
    healthz_ok,
    run_filecask,
)

BANNER_TITLE = "filecask: created the first user"
BANNER_USER = re.compile(r"^\s*user:\s+admin\s*$", re.MULTILINE)
BANNER_PASSWORD = re.compile(r"^\s*password:\s+(\S+)\s*$", re.MULTILINE)


def banner_password(server: Server) -> str:
    stderr = server.stderr()
    assert BANNER_TITLE in stderr, stderr
    assert BANNER_USER.search(stderr), stderr
    found = BANNER_PASSWORD.findall(stderr)
    assert len(found) == 1, stderr
    password: str = found[0]
    return password


def get_me(curl: Curl, server: Server, password: str) -> tuple[int, object]:
    result = curl("-u", f"admin:{password}", server.url("/me"))
    return result.status, result.json()


def upload_status(curl: Curl, server: Server, size: int, tmp_path: Path) -> int:
    source = tmp_path / f"payload-{size}.bin"
    source.write_bytes(os.urandom(size))
    result = curl(
        "-u",
        f"admin:{ADMIN_PASSWORD}",
        "--data-binary",
        f"@{source}",
        server.url("/files?name=payload.bin"),
    )
    return result.status


def write_dotenv(directory: Path, **values: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".env"
    path.write_text("".join(f"FILECASK_{k.upper()}={v}\n" for k, v in values.items()))
    return path


def test_first_start_without_admin_password_prints_banner_with_working_password(
    start_server: StartServer, curl: Curl
) -> None:
    server = start_server(admin_password=None)

    password = banner_password(server)

    assert len(password) >= 12
    status, me = get_me(curl, server, password)
    assert status == 200
    assert isinstance(me, dict)
    assert me["name"] == "admin"
    assert me["is_admin"] is True
    assert get_me(curl, server, password + "x")[0] == 401


def test_restart_on_same_data_dir_prints_no_new_password_and_keeps_old_one(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared-data"
    first = start_server(admin_password=None, data_dir=data_dir)
    password = banner_password(first)
    first.stop()

    second = start_server(admin_password=None, data_dir=data_dir)

    stderr = second.stderr()
    assert BANNER_TITLE not in stderr
    assert "password:" not in stderr
    assert password not in stderr
    status, me = get_me(curl, second, password)
    assert status == 200
    assert isinstance(me, dict)
    assert me["name"] == "admin"


def test_admin_password_from_environment_is_used_and_not_printed(
    start_server: StartServer, curl: Curl
) -> None:
    server = start_server(admin_password=ADMIN_PASSWORD)

    output = server.stderr() + server.stdout()
    assert BANNER_TITLE not in output
    assert ADMIN_PASSWORD not in output
    assert get_me(curl, server, ADMIN_PASSWORD)[0] == 200


def test_dotenv_in_working_directory_sets_max_upload_size(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd-with-dotenv"
    write_dotenv(cwd, max_upload_size="1K")

    server = start_server(cwd=cwd)

    assert upload_status(curl, server, 2048, tmp_path) == 413
    assert upload_status(curl, server, 512, tmp_path) == 201


def test_environment_variable_beats_dotenv(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd-with-dotenv"
    write_dotenv(cwd, max_upload_size="1K")

    server = start_server(cwd=cwd, env={"FILECASK_MAX_UPLOAD_SIZE": "4K"})

    assert upload_status(curl, server, 2048, tmp_path) == 201
    assert upload_status(curl, server, 5000, tmp_path) == 413


def test_cli_flag_beats_environment_and_dotenv(
    start_server: StartServer, curl: Curl, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd-with-dotenv"
    write_dotenv(cwd, max_upload_size="8K")

    server = start_server(
        "--max-upload-size", "1K", cwd=cwd, env={"FILECASK_MAX_UPLOAD_SIZE": "4K"}
    )

    assert upload_status(curl, server, 2048, tmp_path) == 413
    assert upload_status(curl, server, 512, tmp_path) == 201


def test_port_comes_from_dotenv_then_environment_then_flag(
    start_server: StartServer, tmp_path: Path
) -> None:
    """`start_server(port=P)` waits for /healthz on P, so each start asserts its port."""
    cwd = tmp_path / "cwd-with-dotenv"
    dotenv_port, env_port, flag_port = free_port(), free_port(), free_port()
    write_dotenv(cwd, port=str(dotenv_port))

    start_server(cwd=cwd, port=dotenv_port, port_flag=False).stop()

    from_env = start_server(
        cwd=cwd, env={"FILECASK_PORT": str(env_port)}, port=env_port, port_flag=False
    )
    assert not healthz_ok(dotenv_port)
    from_env.stop()

    start_server(cwd=cwd, env={"FILECASK_PORT": str(env_port)}, port=flag_port)
    assert not healthz_ok(env_port)
    assert not healthz_ok(dotenv_port)


def test_serve_with_unusable_data_dir_exits_nonzero_with_one_line_error(
    tmp_path: Path,
) -> None:
    regular_file = tmp_path / "not-a-directory"
    regular_file.write_text("I am a file\n")
    data_dir = regular_file / "data"
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    done = run_filecask(
        ["serve", "--port", str(free_port()), "--data-dir", str(data_dir)],
        cwd=cwd,
        env={"FILECASK_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )

    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error:"), lines[0]
    assert str(regular_file) in lines[0]
