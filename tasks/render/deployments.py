"""The committed `deployments/` tree: every rendered file, written from the config at once."""

from __future__ import annotations

import json
from pathlib import Path

from config.loader import Project
from tasks.render.alert_tests import rules_tests
from tasks.render.alertmanager import alertmanager_config, alertmanager_template_file
from tasks.render.alerts import alert_rules
from tasks.render.compose import compose, compose_nginx_conf
from tasks.render.files import rendered_note, write_text, yaml_text
from tasks.render.grafana import grafana_dashboard, grafana_provisioning
from tasks.render.kubernetes import manifest_files
from tasks.render.names import GRAFANA_DASHBOARDS_DIR, TEMPLATE_FILE
from tasks.render.prefect_yaml import prefect_yaml
from tasks.render.prometheus import prometheus_config, slot_targets


def write_deployments(project: Project, out_dir: Path) -> list[Path]:
    """Write the committed monitoring files under `out_dir` (normally `deployments/`)."""
    note = rendered_note(project)
    files: dict[str, str] = {
        "prometheus/rules.yml": yaml_text(alert_rules(project), note),
        "prometheus/rules_test.yml": yaml_text(rules_tests(project), note),
        "prometheus/prometheus.yml": yaml_text(
            prometheus_config(project, "rules.yml", slot_targets(project)),
            f"{note} The local stack runs a copy with absolute paths from its state dir.",
        ),
        "alertmanager/alertmanager.yml": yaml_text(
            alertmanager_config(project, None),
            f"{note} No Slack here: alerts go to the null receiver and show in the UI.",
        ),
        f"alertmanager/{TEMPLATE_FILE}": alertmanager_template_file(note),
        "grafana/dashboards/driftloop.json": json.dumps(grafana_dashboard(project), indent=2)
        + "\n",
        "compose.yaml": yaml_text(
            compose(project),
            f"{note}\n# Docker: `bentoml containerize {project.config.project.name}:<version>`, "
            "then BENTO_VERSION=<version> docker compose -f deployments/compose.yaml up",
        ),
        "docker/nginx.conf": compose_nginx_conf(project),
        "prefect.yaml": yaml_text(prefect_yaml(project), note),
    }
    for rel, content in grafana_provisioning(project).items():
        files[f"grafana/provisioning/{rel}"] = yaml_text(
            content, f"{note} Mount deployments/grafana/dashboards at {GRAFANA_DASHBOARDS_DIR}."
        )
    for rel, text in manifest_files(project, note).items():
        files[f"k8s/{rel}"] = text
    return [write_text(out_dir / rel, text) for rel, text in files.items()]
