"""The Docker variant of the local stack: a compose file from official images and its nginx."""

from __future__ import annotations

from urllib.parse import urlsplit

from config.loader import Project
from tasks.render.files import rendered_note
from tasks.render.names import IMAGES


def compose(project: Project) -> dict:
    """The same services from official images, sharing one network namespace like a pod.

    Every container joins the `prefect` service's namespace, so the loopback URLs in the config
    (and the rendered prometheus.yml and alertmanager.yml) hold inside the containers too; the
    ports are published once, on `prefect`, bound where the config says.
    """
    cfg = project.config
    ep = cfg.endpoints
    name = cfg.project.name
    shared = {
        "network_mode": "service:prefect",
        "depends_on": ["prefect"],
        "restart": "unless-stopped",
    }
    bento_port = cfg.serving.slot_ports[0]
    published = [
        (urlsplit(url).hostname, urlsplit(url).port)
        for url in (ep.prefect, ep.pushgateway, ep.prometheus, ep.alertmanager, ep.worker)
    ] + [(cfg.serving.host, cfg.serving.port), (cfg.serving.host, bento_port)]
    return {
        "services": {
            "prefect": {
                "image": IMAGES["prefect"],
                "command": [
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(ep.port("prefect")),
                ],
                "environment": {
                    "PREFECT_UI_API_URL": f"{ep.prefect}/api",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                },
                "volumes": ["prefect-data:/root/.prefect"],
                "ports": [f"{host}:{port}:{port}" for host, port in published],
                "restart": "unless-stopped",
            },
            "prefect-worker": {
                **shared,
                "image": IMAGES["prefect"],
                "working_dir": "/opt/driftloop",
                "volumes": ["..:/opt/driftloop"],
                "environment": {
                    "PREFECT_API_URL": f"{ep.prefect}/api",
                    "PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0",
                    "PREFECT_WORKER_WEBSERVER_PORT": str(ep.port("worker")),
                },
                "command": [
                    "bash",
                    "-c",
                    "pip install -q -c constraints.txt -e . && exec prefect worker start "
                    f"--pool {cfg.stack.work_pool} --type process --with-healthcheck",
                ],
            },
            "pushgateway": {
                **shared,
                "image": IMAGES["pushgateway"],
                "volumes": ["pushgateway-data:/pushgateway"],  # the image's own nobody-owned dir
                "command": [
                    f"--web.listen-address=0.0.0.0:{ep.port('pushgateway')}",
                    "--persistence.file=/pushgateway/metrics.db",  # as the local stack does
                    "--persistence.interval=30s",
                ],
            },
            "prometheus": {
                **shared,
                "depends_on": ["prefect", "pushgateway", "alertmanager"],
                "image": IMAGES["prometheus"],
                "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
                "command": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    f"--web.listen-address=0.0.0.0:{ep.port('prometheus')}",
                    f"--web.external-url={ep.prometheus}",
                    "--web.enable-lifecycle",
                ],
            },
            "alertmanager": {
                **shared,
                "image": IMAGES["alertmanager"],
                "volumes": [
                    "./alertmanager:/etc/alertmanager:ro",
                    "alertmanager-data:/alertmanager",
                ],
                "command": [
                    "--config.file=/etc/alertmanager/alertmanager.yml",
                    "--storage.path=/alertmanager",
                    f"--web.listen-address=0.0.0.0:{ep.port('alertmanager')}",
                    f"--web.external-url={ep.alertmanager}",
                    "--cluster.listen-address=",
                ],
            },
            "bento": {
                **shared,
                "image": f"{name}:${{BENTO_VERSION:?set BENTO_VERSION to a version built by "
                f"bentoml containerize {name}:<version>}}",
                "environment": {"BENTOML_PORT": str(bento_port)},
            },
            "nginx": {
                **shared,
                "depends_on": ["prefect", "bento"],
                "image": IMAGES["nginx"],
                "volumes": ["./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro"],
            },
        },
        "volumes": {
            name: {}
            for name in ("prefect-data", "pushgateway-data", "prometheus-data", "alertmanager-data")
        },
    }


def compose_nginx_conf(project: Project) -> str:
    """nginx in compose: clients' port to the bento container (one slot; no blue/green)."""
    serving = project.config.serving
    return f"""\
# {rendered_note(project)}
server {{
    listen {serving.port};
    client_max_body_size 16m;
    location / {{
        proxy_pass http://127.0.0.1:{serving.slot_ports[0]};
        proxy_set_header Host $host;
        proxy_set_header X-Request-Id $request_id;
    }}
}}
"""
