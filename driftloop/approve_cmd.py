"""`driftloop approve|reject RUN` and `driftloop pending`: the CLI channel of the one decision.

Each resumes the same paused run as Slack and the Prefect UI; the first valid decision wins and
a later one is told who decided, how and when. Exit 0 when this decision was recorded, 1 when it
was refused (already decided, stale evidence, expired, not on the allow-list).
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Literal

import typer
from rich.table import Table

from driftloop.console import ConfigOption, console, err_console, project, use_prefect

RunArgument = Annotated[
    str, typer.Argument(help="Flow run id of the paused request (see `driftloop pending`).")
]
AsUserOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Decide as NAME instead of your OS user (only with approval.cli_as: true).",
        show_default=False,
    ),
]
EvidenceOption = Annotated[
    str | None,
    typer.Option(
        "--evidence",
        help="The evidence hash you decide on (from `pending`); required.",
        show_default=False,
    ),
]


def approve(
    run_id: RunArgument,
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why, for the record.")] = "",
    as_user: AsUserOption = None,
    evidence_hash: EvidenceOption = None,
    config: ConfigOption = None,
) -> None:
    """Approve a paused retrain's candidate (the first decision from any channel wins)."""
    _decide(run_id, "approve", comment, as_user, evidence_hash, config)


def reject(
    run_id: RunArgument,
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why it is rejected.")],
    as_user: AsUserOption = None,
    evidence_hash: EvidenceOption = None,
    config: ConfigOption = None,
) -> None:
    """Reject a paused retrain's candidate; a reason is required."""
    if not comment.strip():
        err_console.print("[bold red]error:[/] a rejection needs a reason: --comment TEXT")
        raise typer.Exit(2)
    _decide(run_id, "reject", comment, as_user, evidence_hash, config)


def _decide(
    run_id: str,
    decision: Literal["approve", "reject"],
    comment: str,
    as_user: str | None,
    evidence_hash: str | None,
    config,
) -> None:
    proj = project(config)
    use_prefect(proj)
    import httpx

    from tasks.approval import submit_decision

    approver = _identity(proj, as_user)
    if not evidence_hash:
        err_console.print(
            "[bold red]refused:[/] name the evidence you decide on: --evidence HASH "
            "(`driftloop pending` shows each request's hash)",
            highlight=False,
        )
        raise typer.Exit(2)
    try:
        result = submit_decision(
            proj, run_id, decision, approver, "cli", comment.strip(), evidence_hash
        )
    except httpx.HTTPError as exc:  # Prefect unreachable, or it answered with an error
        err_console.print(f"[bold red]failed:[/] Prefect API: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if result.recorded:
        console.print(f"[green]{result.message}[/] (run {run_id})", highlight=False)
        return
    err_console.print(f"[bold red]not recorded:[/] {result.message}", highlight=False)
    raise typer.Exit(1)


def _identity(proj, as_user: str | None) -> str:
    """The CLI's identity is the OS user running it; `--as` only where the config allows it."""
    os_user = getpass.getuser()
    if as_user is None or as_user == os_user:
        return os_user
    if not proj.config.approval.cli_as:
        err_console.print(
            f"[bold red]refused:[/] the CLI decides as your OS user ({os_user}); --as "
            f"{as_user} needs approval.cli_as: true in the config",
            highlight=False,
        )
        raise typer.Exit(2)
    return as_user


def pending(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List approval requests waiting for a decision, with their evidence and links."""
    proj = project(config)
    use_prefect(proj)
    import httpx

    from tasks.approval import pending_requests

    try:
        requests = pending_requests(proj)
    except httpx.HTTPError as exc:
        err_console.print(f"[bold red]failed:[/] Prefect API: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in requests], indent=2))
        return
    if not requests:
        console.print("no approval requests are waiting")
        return
    table = Table(title="waiting for a decision")
    table.add_column("run", no_wrap=True)
    for column in ("candidate", "why", "gate", "evidence", "age", "expires"):
        table.add_column(column, overflow="fold")
    for r in requests:
        ev = r.evidence
        gate = ", ".join(
            f"{g.metric} {g.champion if g.champion is not None else '-'}"
            f"->{g.candidate if g.candidate is not None else '-'}{'' if g.passed else ' FAIL'}"
            for g in ev.gate
        )
        table.add_row(
            r.run_id,
            f"{ev.candidate}\n(data {ev.data_rev})",
            ev.reason,
            gate or "-",
            r.evidence_hash,
            _age(r.age_seconds),
            r.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        )
    console.print(table)
    for r in requests:
        console.print(f"{r.run_id}: {r.url}", highlight=False, soft_wrap=True)
    console.print(
        "decide with: driftloop approve RUN --evidence HASH [-m TEXT] | "
        "driftloop reject RUN --evidence HASH -m TEXT"
    )


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"
