"""What would make `driftloop up` fail, checked before anything starts: a missing binary, a
port another process holds, a rendered config its own tool rejects."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from config.loader import Project
from tasks.commands import tool_env
from tasks.stack.errors import StackError
from tasks.stack.paths import stack_dir
from tasks.stack.services import services


def check_binaries(project: Project) -> None:
    for svc in services(project):
        if not (shutil.which(svc.binary) or Path(svc.binary).exists()):
            package = svc.apt_package or "the Python dependencies"
            raise StackError(
                f"{svc.name}: binary `{svc.binary}` not found; run `make setup` "
                f"(installs {package})"
            )


def check_ports(project: Project, running: set[str]) -> None:
    """Every port a stopped service needs must be free (ours that already run are fine)."""
    for svc in services(project):
        if svc.name in running:
            continue
        host = urlsplit(svc.health).hostname
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, svc.port))
            except OSError:
                raise StackError(
                    f"{svc.name}: port {svc.port} on {host} is in use by another process; "
                    f"stop it or change that port in {project.path.name}"
                ) from None


def check_configs(project: Project) -> None:
    """promtool, amtool and nginx -t on the rendered files: a bad file never starts."""
    stack = stack_dir(project)
    checks = [
        (
            "prometheus",
            ["promtool", "check", "config", str(stack / "prometheus.yml")],
            stack / "prometheus.yml",
        ),
        (
            "alertmanager",
            ["amtool", "check-config", str(stack / "alertmanager.yml")],
            stack / "alertmanager.yml",
        ),
        (
            "nginx",
            [
                "nginx",
                "-t",
                "-q",
                "-p",
                str(stack / "nginx"),
                "-c",
                str(stack / "nginx" / "nginx.conf"),
            ],
            stack / "nginx" / "nginx.conf",
        ),
    ]
    for name, args, path in checks:
        done = subprocess.run(args, capture_output=True, text=True, env=tool_env())
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise StackError(f"{name}: config invalid ({path}):\n  " + "\n  ".join(detail))
