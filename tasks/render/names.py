"""Names the rendered files share, so a job, uid or image is spelled in one place.

Prometheus job names, the Grafana datasource uid, the Alertmanager template file, the images the
compose file runs, the API-calls filter for serving metrics and the Go-template fragments that
the alert rules and the expected text of their tests both use.
"""

from __future__ import annotations

MONITOR_JOB = "driftloop_monitor"
SERVING_JOB = "driftloop_serving"
SLOTS_JOB = "driftloop_serving_slots"
SLOT_NAMES = ("blue", "green")
DATASOURCE_UID = "driftloop-prometheus"
TEMPLATE_FILE = "driftloop.tmpl"
GRAFANA_DASHBOARDS_DIR = "/etc/grafana/dashboards/driftloop"
IMAGES = {  # the same releases as the Debian binaries the local stack runs
    "prefect": "prefecthq/prefect:3.8.8-python3.11",
    "pushgateway": "prom/pushgateway:v1.5.1",
    "prometheus": "prom/prometheus:v2.42.0",
    "alertmanager": "prom/alertmanager:v0.25.0",
    "nginx": "nginx:1.22",
}
# BentoML counts probes and docs pages too; serving alerts and panels look at API calls only.
API_CALLS = 'endpoint!~"/|/(livez|readyz|healthz|metrics|docs.json|schema.json|static_content/.*)"'

# Go-template fragments shared by the rules and by the expected text in their tests.
MODEL = "{{ $labels.model }}"
VERSION = "{{ $labels.service_version }}"
COLUMN = "{{ $labels.column }}"
METHOD = "{{ $labels.method }}"
VALUE_2F = '{{ printf "%.2f" $value }}'
VALUE_3G = '{{ printf "%.3g" $value }}'
VALUE_0F = '{{ printf "%.0f" $value }}'


def format_number(x: float) -> str:
    """A threshold as rules and tests print it: up to 15 significant digits, no trailing zeros."""
    return f"{x:.15g}"
