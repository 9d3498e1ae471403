"""Monitoring as code: Prometheus rules and their tests, Alertmanager, Grafana and compose files.

Everything is rendered from `config/driftloop.yaml`, so a threshold lives in exactly one place and
a config change reaches the rules, their tests and the dashboard together. Each module renders
one artefact as plain dicts or text; only `deployments` (the committed files under
`deployments/`) and `runtime` (the local stack's copies, with real paths) touch the disk. Metric
and alert names follow `docs/metrics.md`.
"""
