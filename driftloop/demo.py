"""`driftloop demo`: the loop's story on the bundled data, step by step, as far as it exists."""

from __future__ import annotations

from rich.table import Table

from config.loader import Project
from driftloop.console import console
from tasks.data import ensure_data
from tasks.package import build_bento, register_model
from tasks.releases import Release, clear_serving, read_serving, record_serving
from tasks.serving import start_server, stop_server
from tasks.traffic import predict, sample_records
from tasks.training import reproduce


def step(text: str) -> None:
    console.rule(f"[bold cyan]{text}")


def run_demo(project: Project, rows: int) -> None:
    step("1. training data under DVC")
    state = ensure_data(project)
    console.print(f"{state.path}: {state.action} (DVC md5 {state.md5})")

    step("2. dvc repro: prepare -> train -> evaluate")
    with console.status("dvc repro ..."):
        result = reproduce(project)
    console.print(f"stages run: {', '.join(result.stages_run) or 'none (up to date)'}")
    console.print(
        "held-out metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    )

    step("3. bentoml build, pinned to the exact model tag")
    with console.status("bentoml build ..."):
        bento = build_bento(project, register_model(project))
    console.print(f"bento [bold]{bento.tag}[/] -> model {bento.model_tag}")

    step("4. serve it and send predictions over HTTP")
    port = project.config.serving.slot_ports[0]
    with console.status(f"bentoml serve on port {port} ..."):
        server = start_server(project, bento.tag, port)
    try:
        record_serving(
            project,
            Release(
                bento=bento.tag, model_tag=bento.model_tag, url=server.url, labels=bento.labels
            ),
        )
        sample = sample_records(project, rows)
        answer = predict(server.url, sample.records)
        table = Table("row", "predicted", "actual", title=f"{server.url}/predict")
        for i, (pred, actual) in enumerate(zip(answer["predictions"], sample.targets, strict=True)):
            table.add_row(
                str(i), f"{pred:.4g}" if isinstance(pred, float) else str(pred), str(actual)
            )
        console.print(table)

        step("5. lineage of what is serving")
        from driftloop.cli import render_lineage

        render_lineage(read_serving(project))
    finally:
        stop_server(server)
        clear_serving(project)
        console.print(f"stopped the server on port {port}")
