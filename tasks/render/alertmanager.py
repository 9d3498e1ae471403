"""alertmanager.yml and its Slack message template: routing per model, Slack or a null receiver."""

from __future__ import annotations

import os
from pathlib import Path

from config.loader import Project
from tasks.render.names import TEMPLATE_FILE


def alertmanager_config(project: Project, slack_webhook_file: Path | None) -> dict:
    """Route per model and alert to Slack when a webhook file is given, else to a null receiver.

    The webhook URL stays in a file outside git (`api_url_file`); with no receiver configured the
    alerts still show in the Alertmanager UI.
    """
    receiver: dict = {"name": "null"}
    if slack_webhook_file is not None:
        receiver = {
            "name": "slack",
            "slack_configs": [
                {
                    "api_url_file": str(slack_webhook_file),
                    "channel": os.environ.get("SLACK_ALERT_CHANNEL", "#driftloop-alerts"),
                    "send_resolved": True,
                    "title": '{{ template "driftloop.title" . }}',
                    "title_link": '{{ template "driftloop.title_link" . }}',
                    "text": '{{ template "driftloop.text" . }}',
                    "color": '{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}',
                }
            ],
        }
    return {
        "route": {
            "receiver": receiver["name"],
            "group_by": ["alertname", "model"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "inhibit_rules": [  # a dataset-drift alert already lists every drifted column
            {
                "source_matchers": ['alertname="DriftloopDatasetDrift"'],
                "target_matchers": ['alertname="DriftloopColumnDrift"'],
                "equal": ["model"],
            }
        ],
        "receivers": [receiver],
        "templates": [TEMPLATE_FILE],
    }


def alertmanager_template() -> str:
    """The Slack message: per alert its summary, evidence, links and next step."""
    return """\
{{ define "driftloop.title" }}[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.model }}){{ end }}

{{ define "driftloop.title_link" }}{{ with index .Alerts 0 }}{{ or .Annotations.report_url .GeneratorURL }}{{ end }}{{ end }}

{{ define "driftloop.text" }}{{ range .Alerts }}{{ if eq .Status "resolved" }}resolved: {{ end }}*{{ .Annotations.summary }}* ({{ .Labels.severity }})
{{ .Annotations.description }}
{{ if .Annotations.report_url }}<{{ .Annotations.report_url }}|drift report> | {{ end }}{{ if .Annotations.runs_url }}<{{ .Annotations.runs_url }}|monitor runs> | {{ end }}<{{ .GeneratorURL }}|query>
Next: {{ .Annotations.runbook }}
{{ end }}{{ end }}
"""  # noqa: E501


def alertmanager_template_file(note: str) -> str:
    """The template file's text: `note` as a Go-template comment, then the template."""
    return f"{{{{/* {note} */}}}}\n{alertmanager_template()}"
