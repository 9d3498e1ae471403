"""prometheus.yml: what Prometheus scrapes (itself, the Pushgateway, both slots) and alerts to."""

from __future__ import annotations

from urllib.parse import urlsplit

from config.loader import Project
from tasks.render.names import SLOT_NAMES, SLOTS_JOB


def slot_targets(project: Project) -> list[str]:
    """host:port of the blue and green bento slots the local stack runs."""
    serving = project.config.serving
    return [f"{serving.host}:{port}" for port in serving.slot_ports]


def prometheus_config(project: Project, rules_path: str, slot_targets: list[str]) -> dict:
    """Scrape Prometheus itself, the Pushgateway (keeping pushed labels) and both slots."""
    cfg = project.config
    every = f"{cfg.stack.scrape_interval_seconds}s"
    name = cfg.project.name
    return {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "rule_files": [rules_path, *(str(project.resolve(f)) for f in cfg.stack.extra_rule_files)],
        "alerting": {
            "alertmanagers": [
                {
                    "scheme": urlsplit(cfg.endpoints.alertmanager).scheme,
                    "static_configs": [{"targets": [_host_port(cfg.endpoints.alertmanager)]}],
                }
            ]
        },
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [_host_port(cfg.endpoints.prometheus)]}],
            },
            {
                "job_name": "pushgateway",
                "honor_labels": True,  # keep the pushed job and model labels
                "static_configs": [{"targets": [_host_port(cfg.endpoints.pushgateway)]}],
            },
            {
                "job_name": SLOTS_JOB,
                "static_configs": [
                    {"targets": [target], "labels": {"model": name, "slot": slot}}
                    for slot, target in zip(SLOT_NAMES, slot_targets, strict=True)
                ],
            },
        ],
    }


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"
