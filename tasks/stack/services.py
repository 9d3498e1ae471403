"""The stack's services: Prefect server and worker, Pushgateway, Prometheus, Alertmanager and
nginx, each on the port config names, with the command supervisord runs and a health check."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from config.loader import Project
from tasks.commands import bin_path
from tasks.stack.paths import hostport, stack_dir
from tasks.stack.secrets import prefect_env, prefect_server_env, worker_secrets


@dataclass(frozen=True)
class Service:
    """One program of the stack: what supervisord runs, and how to tell it is ready."""

    name: str
    url: str  # what a person opens
    health: str  # answers 200 when the service is ready
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    binary: str = ""
    apt_package: str = ""

    @property
    def port(self) -> int:
        return int(urlsplit(self.health).port)


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `driftloop status`."""

    name: str
    url: str
    state: str
    pid: int | None
    uptime: str
    healthy: bool


def services(project: Project) -> list[Service]:
    """The stack's services in start order, from config."""
    ep = project.config.endpoints
    stack, state = stack_dir(project), project.state_dir
    prefect_url = urlsplit(ep.prefect)
    worker_url = urlsplit(ep.worker)
    nginx_url = f"http://{project.config.serving.host}:{project.config.serving.port}"
    return [
        Service(
            "prefect-server",
            ep.prefect,
            ep.prefect + "/api/health",
            [
                bin_path("prefect"),
                "server",
                "start",
                "--host",
                prefect_url.hostname,
                "--port",
                str(prefect_url.port),
                "--analytics-off",
            ],
            env={**prefect_env(project), **prefect_server_env(project)},
            binary=bin_path("prefect"),
        ),
        Service(
            "prefect-worker",
            f"{ep.prefect}/work-pools/work-pool/{project.config.stack.work_pool}",
            ep.worker + "/health",
            [
                bin_path("prefect"),
                "worker",
                "start",
                "--pool",
                project.config.stack.work_pool,
                "--type",
                "process",
                "--name",
                f"{project.config.project.name}-local",
                "--with-healthcheck",
            ],
            env={
                **prefect_env(project),
                "PREFECT_WORKER_QUERY_SECONDS": str(project.config.stack.worker_poll_seconds),
                "PREFECT_WORKER_WEBSERVER_HOST": worker_url.hostname,
                "PREFECT_WORKER_WEBSERVER_PORT": str(worker_url.port),
                "DRIFTLOOP_ROOT": str(project.root),
                "DRIFTLOOP_CONFIG": str(project.path),
                "BENTOML_HOME": str(project.state_dir / "bentoml"),
                "BENTOML_DO_NOT_TRACK": "true",
                **worker_secrets(),
            },
            binary=bin_path("prefect"),
        ),
        Service(
            "pushgateway",
            ep.pushgateway,
            ep.pushgateway + "/-/ready",
            [
                "prometheus-pushgateway",
                f"--web.listen-address={hostport(ep.pushgateway)}",
                f"--persistence.file={state / 'pushgateway' / 'metrics.db'}",
                "--persistence.interval=30s",
            ],
            binary="prometheus-pushgateway",
            apt_package="prometheus-pushgateway",
        ),
        Service(
            "prometheus",
            ep.prometheus,
            ep.prometheus + "/-/ready",
            [
                "prometheus",
                f"--config.file={stack / 'prometheus.yml'}",
                f"--storage.tsdb.path={state / 'prometheus'}",
                f"--web.listen-address={hostport(ep.prometheus)}",
                f"--web.external-url={ep.prometheus}",
                "--web.enable-lifecycle",
            ],
            binary="prometheus",
            apt_package="prometheus",
        ),
        Service(
            "alertmanager",
            ep.alertmanager,
            ep.alertmanager + "/-/ready",
            [
                "prometheus-alertmanager",
                f"--config.file={stack / 'alertmanager.yml'}",
                f"--storage.path={state / 'alertmanager'}",
                f"--web.listen-address={hostport(ep.alertmanager)}",
                f"--web.external-url={ep.alertmanager}",
                "--cluster.listen-address=",
            ],
            binary="prometheus-alertmanager",
            apt_package="prometheus-alertmanager",
        ),
        Service(
            "nginx",
            nginx_url,
            nginx_url + "/nginx-health",
            [
                "nginx",
                "-p",
                str(stack / "nginx"),
                "-c",
                str(stack / "nginx" / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            binary="nginx",
            apt_package="nginx",
        ),
    ]


def healthy(url: str) -> bool:
    """True if `url` answers 200 within two seconds."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
