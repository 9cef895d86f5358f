"""Where the admin token comes from: a mounted file first, then the environment, else a generated 0600 file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.serving import admin
from sluice.serving.errors import Forbidden, Unauthorized


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in (admin.TOKEN_ENV, admin.TOKEN_FILE_ENV, admin.URI_SCHEMES_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def test_a_mounted_token_file_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-secret\n")
    monkeypatch.setenv(admin.TOKEN_FILE_ENV, str(tmp_path / "token"))
    monkeypatch.setenv(admin.TOKEN_ENV, "from-env")
    auth = admin.from_env()
    assert auth.token == "from-secret"
    assert auth.allows({"authorization": "Bearer from-secret"})
    assert not auth.allows({"authorization": "Bearer from-env"})
    with pytest.raises(Unauthorized):
        auth.require({})


def test_a_missing_secret_falls_back_to_a_generated_private_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(admin.TOKEN_FILE_ENV, str(tmp_path / "absent"))  # optional Secret not created
    assert admin.from_env().token is None
    assert "missing or empty" in caplog.text
    with pytest.raises(Forbidden):
        admin.from_env().require({"authorization": "Bearer "})
    auth = admin.for_process("router")
    assert auth.generated
    assert auth.token_file is not None
    assert auth.token_file.parent == tmp_path
    assert auth.token_file.stat().st_mode & 0o777 == 0o600
    assert auth.token_file.read_text().strip() == auth.token
    assert len(auth.token or "") >= 40
    admin.remove_token_file(auth)
    assert not auth.token_file.exists()


def test_uri_schemes_allow_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert admin.from_env().uri_schemes == ("file", "https", "s3", "gs")
    monkeypatch.setenv(admin.URI_SCHEMES_ENV, "S3, gs")
    assert admin.from_env().uri_schemes == ("s3", "gs")


def _swap(path: Path, text: str) -> None:
    """Replace `path` the way kubelet updates a Secret volume: a new file renamed over the old one."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    new.replace(path)


def test_a_rotated_secret_replaces_the_token_without_a_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mounted = tmp_path / "token"
    mounted.write_text("first\n")
    monkeypatch.setenv(admin.TOKEN_FILE_ENV, str(mounted))
    auth = admin.for_process("router")
    assert not auth.generated
    assert auth.allows({"authorization": "Bearer first"})
    _swap(mounted, "second\n")
    assert auth.allows({"authorization": "Bearer second"})
    assert not auth.allows({"authorization": "Bearer first"})
    mounted.unlink()  # the Secret deleted: the token in use stays until the operator's new one arrives
    assert auth.allows({"authorization": "Bearer second"})
    _swap(mounted, "")  # an empty file neither
    auth.require({"authorization": "Bearer second"})
    _swap(mounted, "third")
    with pytest.raises(Unauthorized):
        auth.require({"authorization": "Bearer second"})
    auth.require({"authorization": "Bearer third"})


def test_a_secret_created_after_start_replaces_the_generated_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mounted = tmp_path / "mounted-token"
    monkeypatch.setenv(admin.TOKEN_FILE_ENV, str(mounted))
    auth = admin.for_process("router")  # no Secret yet: a generated token in a private file
    generated = auth.token_file
    assert auth.generated
    assert generated is not None
    assert generated.exists()
    assert auth.allows({"authorization": f"Bearer {auth.token}"})
    _swap(mounted, "from-the-operator\n")
    assert auth.allows({"authorization": "Bearer from-the-operator"})
    assert auth.token_file == mounted
    assert not auth.generated
    assert not generated.exists(), "the generated token is revoked and its file removed"
    admin.remove_token_file(auth)
    assert mounted.exists(), "the mounted Secret is never deleted"


def test_the_ray_ingress_opens_its_admin_api_once_the_secret_appears(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mounted = tmp_path / "token"
    monkeypatch.setenv(admin.TOKEN_FILE_ENV, str(mounted))
    auth = admin.from_env()  # what build_app uses inside Ray Serve
    with pytest.raises(Forbidden):
        auth.require({"authorization": "Bearer x"})
    _swap(mounted, "now-set")
    auth.require({"authorization": "Bearer now-set"})
