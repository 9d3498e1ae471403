"""nginx in front of the serving slots and the reports: its config, the upstream file a swap
rewrites, and the user its workers run as."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import stat
from pathlib import Path

from config.loader import Project
from tasks.stack.errors import StackError
from tasks.stack.paths import hostport, log_dir, reports_dir, stack_dir, template
from tasks.stack.values import one_line

# What a report page may do in the browser. Evidently's report is one file whose script, styles
# and font are inline: it needs inline script and style, data: fonts and images, and nothing from
# the network. `sandbox` without allow-same-origin gives the page an opaque origin: a script that
# runs anyway reads no cookie and cannot call another origin (the Prefect API) as the user;
# connect-src 'none' keeps it from sending anything out.
REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
NGINX_USER = ("nobody", ("nogroup", "nobody"))  # exist on Debian and most distributions


def nginx_user(project: Project) -> tuple[str | None, str]:
    """The `user` directive for nginx's workers, and a note for the rendered file.

    Only a master running as root can switch users; as root, the workers drop to `nobody`.
    They must reach the reports and nginx's temp directories: if a directory above them lets
    no other user through (a checkout under a 0700 home or temp directory), they stay root,
    and the note says which directory to open (`chmod o+x`) or to move the project out of."""
    if os.geteuid() != 0:
        return None, ""
    name, groups = NGINX_USER
    try:
        uid = pwd.getpwnam(name).pw_uid
        group = next(g for g in groups if _group_exists(g))
    except (KeyError, StopIteration):
        return "root", f"workers run as root: no user {name!r} on this machine"
    gid = grp.getgrnam(group).gr_gid
    nginx = stack_dir(project) / "nginx"
    for path in (reports_dir(project), nginx / "temp"):
        blocked = _blocked(path, uid, gid)
        if blocked is not None:
            note = (
                f"workers run as root: {name} cannot pass {blocked} on the way to {path}; "
                f"`chmod o+x {blocked}`, or a project elsewhere, lets them drop to {name}"
            )
            logging.getLogger("driftloop").warning("nginx: %s", note)
            return "root", note
    return f"{name} {group}", f"workers run as {name}"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _blocked(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory from / down to `path` that the user cannot search (None: all can)."""
    for directory in [*reversed(path.parents), path]:
        mode = directory.stat()
        if mode.st_uid == uid:
            bit = stat.S_IXUSR
        elif mode.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not mode.st_mode & bit:
            return directory
    return None


def _nginx_path(path: Path) -> str:
    """A path as a quoted nginx string; refused if it holds what nginx would read otherwise."""
    value = one_line(str(path), "a path in nginx.conf")
    if re.search(r'["\\$]', value):
        raise StackError(f'nginx: the path {value!r} holds ", \\ or $; move the project')
    return f'"{value}"'


def render_nginx(project: Project) -> None:
    """nginx in front of the serving slots; the upstream lives in its own file for swaps.

    The reports server sends only files (no listing, no symlinks) with headers that keep a
    report's page from running anything but the report (REPORT_CSP)."""
    nginx = stack_dir(project) / "nginx"
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (nginx / "temp" / temp).mkdir(parents=True, exist_ok=True)
    upstream = nginx / "upstream.conf"
    if not upstream.exists():  # a later swap rewrites it; `up` must not undo a swap
        write_upstream(project, project.config.serving.slot_ports[0])
    shadow = nginx / "shadow.conf"
    if not shadow.exists():  # a shadow stage rewrites it; `up` renders it off
        write_shadow(project, None)
    serving = project.config.serving
    user, note = nginx_user(project)
    q = _nginx_path
    (nginx / "nginx.conf").write_text(
        template("nginx.conf.tmpl").substitute(
            note=note or "workers run as the user who ran `driftloop up`",
            user_directive=f"user {user};" if user else "",
            pid=q(nginx / "nginx.pid"),
            error_log=q(log_dir(project) / "nginx-error.log"),
            access_log=q(log_dir(project) / "nginx-access.log"),
            client_body_temp_path=q(nginx / "temp/client_body"),
            proxy_temp_path=q(nginx / "temp/proxy"),
            fastcgi_temp_path=q(nginx / "temp/fastcgi"),
            uwsgi_temp_path=q(nginx / "temp/uwsgi"),
            scgi_temp_path=q(nginx / "temp/scgi"),
            upstream=q(upstream),
            shadow=q(shadow),
            reports_listen=hostport(project.config.endpoints.reports),
            reports_root=q(reports_dir(project)),
            report_csp=REPORT_CSP,
            serving_listen=f"{serving.host}:{serving.port}",
        )
    )


def upstream_port(project: Project) -> int | None:
    """The slot port nginx sends clients to now (None before the first `up`)."""
    path = stack_dir(project) / "nginx" / "upstream.conf"
    match = re.search(r"server 127\.0\.0\.1:(\d+);", path.read_text()) if path.exists() else None
    return int(match.group(1)) if match else None


def write_upstream(project: Project, port: int) -> Path:
    """Point nginx's `bento_active` upstream at the slot on `port`; returns the file."""
    path = stack_dir(project) / "nginx" / "upstream.conf"
    tmp = path.with_suffix(".new")
    tmp.write_text(template("upstream.conf.tmpl").substitute(port=port))
    tmp.replace(path)  # atomic: nginx never reads half a file
    return path


def write_shadow(project: Project, port: int | None, secret: str = "") -> Path:
    """Mirror live requests to the slot on `port`, marked with `secret` (None: mirror nothing).

    The file is readable by its owner only: the secret is what lets the candidate tell a
    mirrored request from a client's."""
    path = stack_dir(project) / "nginx" / "shadow.conf"
    tmp = path.with_suffix(".new")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    if port is None:
        tmp.write_text("# no shadow stage running\n")
    else:
        if not re.fullmatch(r"[A-Za-z0-9]+", secret):
            raise StackError("nginx: the mirror secret must be letters and digits")
        timeout = f"{max(project.config.serving.max_p95_latency_seconds * 2, 1):.0f}s"
        text = template("shadow.conf.tmpl").substitute(
            port=port, secret=secret, read_timeout=timeout
        )
        tmp.write_text(text)
    tmp.replace(path)  # atomic: nginx never reads half a file
    return path
