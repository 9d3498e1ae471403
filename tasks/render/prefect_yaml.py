"""prefect.yaml: the flows' deployments, their work pool and the monitor's schedule."""

from __future__ import annotations

from config.loader import Project

# Prefect deployments: flow name -> entrypoint. Each is registered once its module exists.
FLOW_DEPLOYMENTS = {
    "monitor": "flows/monitor.py:monitor",
    "retrain": "flows/retrain.py:retrain",
    "promote": "flows/promote.py:promote",
}


def prefect_yaml(project: Project) -> dict:
    """Where and when the flows run: the process work pool, code run in place, the schedule.

    Parameters come from config/driftloop.yaml at run time (DRIFTLOOP_CONFIG in the worker's
    environment), so nothing here repeats a value of the config but the schedule it derives.
    """
    cfg = project.config
    deployments = []
    for name, entrypoint in FLOW_DEPLOYMENTS.items():
        if not project.resolve(entrypoint.split(":")[0]).is_file():
            continue
        deployment: dict = {
            "name": name,
            "entrypoint": entrypoint,
            "work_pool": {"name": cfg.stack.work_pool},
            "tags": [cfg.project.name, name],
        }
        if name == "monitor":
            deployment["schedules"] = [{"interval": cfg.monitor.interval_seconds, "active": True}]
        else:
            deployment["concurrency_limit"] = {"limit": 1, "collision_strategy": "ENQUEUE"}
        deployments.append(deployment)
    return {
        "name": "driftloop",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        "pull": [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $DRIFTLOOP_ROOT }}"
                }
            }
        ],
        "deployments": deployments,
    }
