"""``--state-url``: flag, environment and YAML; SQLite by default; which store it opens."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pgcluster import Cluster
from pydantic import ValidationError

from babelgate.cli import serve
from babelgate.server.admin_store import ThresholdStore
from babelgate.server.admin_store_pg import PostgresThresholdStore
from babelgate.server.settings import ServeSettings, load_settings
from babelgate.server.store_url import open_store, sqlite_url


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BABELGATE_STATE_URL", "BABELGATE_STATE_DIR", "BABELGATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_default_is_the_sqlite_store_in_the_state_folder(tmp_path: Path) -> None:
    assert ServeSettings().threshold_store_url(tmp_path) == f"sqlite:///{tmp_path}"
    own = tmp_path / "own"
    assert ServeSettings(state_dir=own).threshold_store_url(tmp_path) == sqlite_url(own)


def test_flag_beats_environment_beats_yaml(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("state_url: postgresql://yaml@db:5432/babelgate\n")
    assert load_settings(config).threshold_store_url(tmp_path).startswith("postgresql://yaml@")
    monkeypatch.setenv("BABELGATE_STATE_URL", "postgresql://env:secret@db/babelgate")
    from_env = serve.settings_from_args(parse(["--config", str(config)]))
    assert from_env.threshold_store_url(tmp_path) == "postgresql://env:secret@db/babelgate"
    assert "secret" not in repr(from_env)  # a URL may carry the password: kept secret
    flag = serve.settings_from_args(parse(["--state-url", "sqlite:///here"]))
    assert flag.threshold_store_url(tmp_path) == "sqlite:///here"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"state_url": "mysql://u:pw@h/db"}, "neither sqlite:///DIR"),
        ({"state_url": "sqlite:///"}, "neither sqlite:///DIR"),
        ({"state_url": "sqlite:///x", "state_dir": "/tmp/y"}, "give one"),
    ],
)
def test_bad_state_urls_fail_at_start(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        ServeSettings(**settings)
    assert "u:pw" not in str(err.value)  # a password in the URL is not echoed back


def test_open_store_picks_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Cluster
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///state", "abc")  # SQLAlchemy's spelling: relative
    assert isinstance(relative, ThresholdStore)
    assert relative.path == Path("state") / "thresholds-abc.sqlite3"
    absolute = open_store(f"sqlite:///{tmp_path}/abs", "abc")
    assert absolute.path == tmp_path / "abs" / "thresholds-abc.sqlite3"
    shared = open_store(postgres.url(), "abc")
    assert isinstance(shared, PostgresThresholdStore)
    where = f"{postgres.user}@{postgres.host}:{postgres.port}"
    assert shared.description == f"postgresql://{where}/postgres"
    for store in (relative, absolute, shared):
        store.close()
