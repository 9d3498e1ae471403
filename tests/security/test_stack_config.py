"""What reaches supervisord.conf and nginx.conf stays the value it was: no newline starts a
section of its own, every other value is read back exactly as written; secrets stay out of
supervisord's own environment and the files that hold them are 0600."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT

EVIL = "x\n[program:evil]\ncommand=/bin/touch {marker}"


def _project(tmp_path: Path, change=None):
    from config.loader import load_project

    raw = yaml.safe_load((ROOT / "config/driftloop.yaml").read_text())
    if change:
        change(raw)
    path = tmp_path / "config" / "driftloop.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "pyproject.toml").write_text("")  # the project root: nothing lands elsewhere
    project = load_project(path)
    assert project.root == tmp_path
    return project


def _parse(conf: str):
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    parser.read_string(conf)
    return parser


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("project.name", lambda raw, evil: raw["project"].update(name=evil)),
        ("stack.work_pool", lambda raw, evil: raw["stack"].update(work_pool=evil)),
        ("capture.path", lambda raw, evil: raw.setdefault("capture", {}).update(path=evil)),
        ("data.path", lambda raw, evil: raw["data"].update(path=evil)),
        (
            "stack.extra_rule_files.0",
            lambda raw, evil: raw["stack"].update(extra_rule_files=[evil]),
        ),
        (
            "endpoints.prefect",
            lambda raw, evil: raw["endpoints"].update(prefect="http://127.0.0.1:4200\n" + evil),
        ),
        (
            "serving.host",
            lambda raw, evil: raw.setdefault("serving", {}).update(host="127.0.0.1;\n" + evil),
        ),
    ],
)
def test_a_newline_in_a_name_path_or_url_is_a_config_error(tmp_path, key, change):
    from config.loader import ConfigError

    evil = EVIL.format(marker=tmp_path / "pwned")
    with pytest.raises(ConfigError) as refused:
        _project(tmp_path, lambda raw: change(raw, evil))
    assert f"  {key}: " in str(refused.value)


def test_program_section_refuses_what_would_start_a_line(tmp_path):
    from tasks.stack.errors import StackError
    from tasks.stack.supervisor import program_section

    project = _project(tmp_path)
    evil = EVIL.format(marker=tmp_path / "pwned")
    for args in (
        ("bento-blue", ["serve", evil], {}),
        ("bento-blue", ["serve"], {"CAPTURE": evil}),
        ("bento-blue", ["serve"], {"CAPTURE": "a\rb"}),
        ("bento-blue", ["serve"], {"BAD KEY": "x"}),
        ("bento-blue", ["serve"], {"CAPTURE": "a ; comment"}),
        ("evil]\n[program:x", ["serve"], {}),
    ):
        with pytest.raises(StackError):
            program_section(project, *args)


def test_values_read_back_exactly_as_written(tmp_path):
    """Spaces, quotes, `%`, backslashes, commas: supervisord reads what the config said."""
    from supervisor.datatypes import dict_of_key_value_pairs

    from tasks.stack.supervisor import program_section

    project = _project(tmp_path)
    command = ["/opt/my tools/serve", 'say "hi"', "100%", "a\\b\\", "k=v,w", ""]
    env = {"A": 'it"s', "B": "it's", "C": "%(ENV_HOME)s", "D": "x,y=z", "E": "C:\\dir\\"}
    section = "\n".join(program_section(project, "bento-blue", command, env))
    parser = _parse(section)
    read = parser.saneget("program:bento-blue", "command")
    assert shlex.split(read) == command
    raw_env = parser.saneget("program:bento-blue", "environment")
    parsed = dict_of_key_value_pairs(raw_env)
    assert {k: parsed[k] for k in env} == env
    assert parser.sections() == ["program:bento-blue"]


def test_supervisord_conf_has_only_our_sections_and_is_private(tmp_path, monkeypatch):
    from tasks.stack.lifecycle import render
    from tasks.stack.paths import stack_dir
    from tasks.stack.services import services

    monkeypatch.setattr("tasks.stack.lifecycle.write_runtime", lambda *a: None)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.example/T/B/x")
    project = _project(tmp_path)
    hook = stack_dir(project) / "secrets" / "slack_webhook_url"
    hook.parent.mkdir(parents=True)
    hook.write_text("old")
    hook.chmod(0o644)
    conf = render(project)
    assert conf.stat().st_mode & 0o777 == 0o600
    assert hook.stat().st_mode & 0o777 == 0o600 and hook.read_text().startswith("https://")
    assert hook.parent.stat().st_mode & 0o777 == 0o700
    programs = [s for s in _parse(conf.read_text()).sections() if s.startswith("program:")]
    assert programs == [f"program:{svc.name}" for svc in services(project)]


def test_a_newline_in_the_project_path_renders_nothing(tmp_path):
    from tasks.stack.errors import StackError
    from tasks.stack.lifecycle import render

    marker = tmp_path / "pwned"
    root = Path(f"{tmp_path}/x\n[program:evil]\ncommand=/bin/touch {marker}\n;") / "proj"
    project = _project(root)
    with pytest.raises(StackError, match="control character"):
        render(project)
    assert not (project.state_dir / "stack" / "supervisord.conf").exists()
    assert not marker.exists()


def test_supervisord_starts_without_secrets_and_the_worker_gets_them(monkeypatch, tmp_path):
    from tasks.stack.secrets import AUTH_ENV, is_secret, supervisor_env
    from tasks.stack.services import services

    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_WEBHOOK_URL"):
        monkeypatch.setenv(name, f"value-of-{name}")
    monkeypatch.setenv("DRIFTLOOP_DECISION_KEY", "k" * 32)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    monkeypatch.setenv("MULTILINE_TOKEN", "-----BEGIN-----\nabc")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = supervisor_env()
    assert not [k for k in env if k.startswith("SLACK_")]
    assert "DRIFTLOOP_DECISION_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert AUTH_ENV not in env and env["LANG"] == "C.UTF-8" and env["PATH"]
    project = _project(tmp_path)
    worker = next(s for s in services(project) if s.name == "prefect-worker")
    assert worker.env["SLACK_BOT_TOKEN"] == "value-of-SLACK_BOT_TOKEN"
    assert worker.env["DRIFTLOOP_DECISION_KEY"] == "k" * 32
    assert AUTH_ENV in worker.env and "MULTILINE_TOKEN" not in worker.env
    others = [s for s in services(project) if s.name != "prefect-worker"]
    for svc in others:
        assert not [k for k in svc.env if is_secret(k) and "AUTH_STRING" not in k], svc.name


def test_a_slot_gets_the_stores_credentials_only_when_capture_is_on_s3(monkeypatch, tmp_path):
    """supervisord starts its programs without secrets: a slot writing to S3 gets the AWS
    variables in its own section, a slot writing to a local directory gets none."""
    from tasks.release.serving import capture_env

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "slack")
    local = capture_env(_project(tmp_path / "local"))
    assert not [k for k in local if k.startswith("AWS_")]

    def on_s3(raw: dict) -> None:
        raw["capture"]["path"] = "s3://bucket/capture"
        raw["storage"] = {"endpoint_url": "http://127.0.0.1:9"}

    remote = capture_env(_project(tmp_path / "s3", on_s3))
    assert remote["AWS_ACCESS_KEY_ID"] == "key-id" and remote["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert remote["DRIFTLOOP_CAPTURE_DIR"] == "s3://bucket/capture"
    assert remote["DRIFTLOOP_STORAGE_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert "SLACK_BOT_TOKEN" not in remote
