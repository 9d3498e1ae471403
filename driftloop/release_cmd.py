"""`driftloop release BENTO`, `driftloop promote RUN` and `driftloop serve BENTO`.

`release` and `promote` put a bento into the stack's blue/green slots through the same checks as
an approved roll-forward (start, /readyz, smoke test, switch, watch; back to the previous release
on failure). `serve` is a development server on a port of its own: never recorded as serving,
its traffic never captured, so the loop's next roll-forward finds the slots as it left them.
"""

from __future__ import annotations

import getpass
import signal
from typing import Annotated

import typer

from driftloop.console import ConfigOption, console, err_console, failures, project
from driftloop.preflight import require

BentoArgument = Annotated[str, typer.Argument(help="Exact bento tag NAME:VERSION.")]


def release(bento: BentoArgument, config: ConfigOption = None) -> None:
    """Put a built bento into service by hand, through the roll-forward's checks.

    Also the first release, when nothing serves yet; recorded as a release by your OS user."""
    from tasks.release.package import Bento, bento_info
    from tasks.release.rollout import put_into_service

    proj = project(config)
    _require_stack(proj)
    require(proj, "nginx")
    who = getpass.getuser()
    with failures(), console.status(f"releasing {bento} ...") as status:
        info = bento_info(proj, bento)
        labels = {str(k): str(v) for k, v in (info.get("labels") or {}).items()}
        if "model_tag" not in labels:
            err_console.print(
                f"[bold red]refused:[/] {bento} has no model_tag label: build it with "
                "`driftloop build`",
                highlight=False,
            )
            raise typer.Exit(2)
        built = Bento(
            tag=str(info.get("tag") or bento), model_tag=labels["model_tag"], labels=labels
        )
        served = put_into_service(
            proj, built, progress=status.update, action="release", released_by=who
        )
    console.print(
        f"[bold]{served.bento}[/] serving at {served.url} (model {served.model_tag}), "
        f"released by hand by {who}",
        highlight=False,
    )


RunArgument = Annotated[
    str, typer.Argument(help="The retrain's flow run id (from `driftloop pending` or Slack).")
]


def promote(run_id: RunArgument, config: ConfigOption = None) -> None:
    """Promote an approved retrain's candidate whose promotion failed.

    Uses the decision already recorded with the run; refused (exit 2) for runs that were
    rejected, expired, never approved or already promoted."""
    from tasks.release.promotion import PromotionRefused, approved_candidate

    proj = project(config)
    require(proj, "prefect")
    try:
        approved = approved_candidate(proj, run_id)
    except PromotionRefused as exc:
        err_console.print(f"[bold red]refused:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    _require_stack(proj)
    console.print(
        f"promoting {approved.candidate}: approved by {approved.approver} via "
        f"{approved.channel} at {approved.approved_at}",
        highlight=False,
    )
    from flows.promote import promote as promote_flow

    try:
        bento = promote_flow(
            candidate=approved.candidate,
            retrain_run=approved.run_id,
            evidence_hash=approved.evidence_hash,
            config=str(proj.path),
        )
    except Exception as exc:  # the flow has logged the attempt and told Slack; one line here
        err_console.print(f"[bold red]failed:[/] {str(exc).splitlines()[0]}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"[bold]{bento}[/] serving (retrain run {approved.run_id})", highlight=False)


def serve(
    bento: BentoArgument,
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    config: ConfigOption = None,
) -> None:
    """A development server for one bento, in the foreground until Ctrl-C.

    Never recorded as serving and never captured: `driftloop release` puts a bento into
    service."""
    from tasks.release.serving import start_server, stop_server

    proj = project(config)
    serving = proj.config.serving
    taken = {serving.port, *serving.slot_ports}
    if port in taken:
        err_console.print(
            f"[bold red]refused:[/] port {port} belongs to the stack's serving "
            f"(serving.port and serving.slot_ports: {sorted(taken)}); pick another",
            highlight=False,
        )
        raise typer.Exit(2)
    with failures():
        server = start_server(proj, bento, port or _free_port(), capture=False)
    console.print(
        f"development server for {bento} at {server.url} (not serving the loop, not captured; "
        "Ctrl-C stops)",
        highlight=False,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # stop the server on SIGTERM too, never orphan it
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _require_stack(proj) -> None:
    """The slots are supervisord programs of the stack: without it, one line and exit 2."""
    from tasks.stack.supervisor import supervisor_pid

    if supervisor_pid(proj) is None:
        err_console.print(
            "[bold red]failed:[/] the local stack (supervisord) is not running: start it with "
            "`driftloop up`",
            highlight=False,
        )
        raise typer.Exit(2)
