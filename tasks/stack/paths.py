"""Where the local stack keeps its files (config, logs, reports under `.driftloop/`) and the
templates its config files are rendered from."""

from __future__ import annotations

from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from config.loader import Project

# deployments/templates of the checkout: `make setup` installs this package editable, so the
# templates are read beside the code, whatever project the config belongs to.
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "deployments" / "templates"


def stack_dir(project: Project) -> Path:
    return project.state_dir / "stack"


def reports_dir(project: Project) -> Path:
    return project.state_dir / "reports"


def log_dir(project: Project) -> Path:
    return project.state_dir / "logs"


def prefect_auth_file(project: Project) -> Path:
    return project.state_dir / "prefect-auth"


def template(name: str) -> Template:
    """A template of deployments/templates: `$name` placeholders, `$$` for a literal `$`."""
    return Template((TEMPLATES_DIR / name).read_text())


def hostport(url: str) -> str:
    """`host:port` of a URL, as a listen address."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"
