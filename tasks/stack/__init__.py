"""The local stack under supervisord: Prefect server and worker, Pushgateway, Prometheus,
Alertmanager and nginx, each on the port config names, each with a health check and a log.

supervisord does the supervising; this package only renders its config (`supervisor`, `nginx`,
from the templates under deployments/templates), checks what would make a start fail
(`preflight`) and waits for health with a deadline (`lifecycle`).
"""
