"""The local stack's monitoring files: the same rules and configs, with real paths and Slack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.loader import Project
from tasks.render.alertmanager import alertmanager_config, alertmanager_template_file
from tasks.render.alerts import alert_rules
from tasks.render.files import rendered_note, write_text, yaml_text
from tasks.render.names import TEMPLATE_FILE
from tasks.render.prometheus import prometheus_config, slot_targets


@dataclass(frozen=True)
class StackFiles:
    """The monitoring files `driftloop up` starts Prometheus and Alertmanager with."""

    prometheus_config: Path
    rules: Path
    alertmanager_config: Path


def write_runtime(project: Project, out_dir: Path, slack_webhook_file: Path | None) -> StackFiles:
    """Write the local stack's prometheus.yml, rules.yml and alertmanager.yml into `out_dir`."""
    out_dir = out_dir.resolve()
    note = rendered_note(project)
    rules = write_text(out_dir / "rules.yml", yaml_text(alert_rules(project), note))
    write_text(out_dir / TEMPLATE_FILE, alertmanager_template_file(note))
    return StackFiles(
        prometheus_config=write_text(
            out_dir / "prometheus.yml",
            yaml_text(prometheus_config(project, str(rules), slot_targets(project)), note),
        ),
        rules=rules,
        alertmanager_config=write_text(
            out_dir / "alertmanager.yml",
            yaml_text(alertmanager_config(project, slack_webhook_file), note),
        ),
    )
