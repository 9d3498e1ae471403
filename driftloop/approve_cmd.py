"""`driftloop approve|reject RUN` and `driftloop pending`: the CLI channel of the one decision.

Each resumes the same paused run as Slack and the Prefect UI; the first valid decision wins and
a later one is told who decided, how and when. Exit 0 when this decision was recorded, 1 when it
was refused (already decided, stale evidence, expired, not on the allow-list).
"""

from __future__ import annotations

import getpass
import json
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from driftloop.console import (
    ConfigOption,
    console,
    err_console,
    key_values,
    project,
    use_prefect,
)
from driftloop.preflight import require

if TYPE_CHECKING:
    from tasks.approval.records import PendingRequest
    from tasks.evidence import Evidence, GateRow, QualityRow

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
    require(proj, "prefect")
    use_prefect(proj)
    import httpx

    from tasks.approval.submit import submit_decision

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
    require(proj, "prefect")
    use_prefect(proj)
    import httpx

    from tasks.approval.pending import pending_requests

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
    render_pending(requests)


def render_pending(requests: list[PendingRequest], out: Console = console) -> None:
    """A card per request: a table of seven columns wraps every cell to nothing at 80 columns,
    while key: value lines keep the run id and the evidence hash whole, ready to copy."""
    out.print(f"{len(requests)} waiting for a decision", highlight=False)
    for r in requests:
        out.print()
        out.print(_card(r))
        out.print(f"  {r.url}", highlight=False, soft_wrap=True)  # a link stays one piece
    out.print()
    out.print("decide with: driftloop approve RUN --evidence HASH [-m TEXT]", highlight=False)
    out.print("         or: driftloop reject RUN --evidence HASH -m TEXT", highlight=False)


def _card(r: PendingRequest) -> Table:
    ev = r.evidence
    expires = r.expires_at.strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("run", f"{r.run_id} ({r.run_name})"),
        ("candidate", ev.candidate),
        ("data rev", ev.data_rev),
        ("why", ev.reason),
        ("gate", "\n".join(_gate(g) for g in ev.gate) or "-"),
        ("drift", _drift(ev) or "-"),
        ("quality", "\n".join(_quality(q) for q in ev.quality) or "-"),
        *([("estimated", _estimated(ev))] if ev.estimated else []),
        ("evidence", r.evidence_hash),
        ("age", f"{_age(r.age_seconds)}, expires {expires}"),
    ]
    return key_values(rows)


def _gate(g: GateRow) -> str:
    """E.g. 'rmse 61.2 -> 48.1 pass', four significant digits."""
    return f"{g.metric} {_num(g.champion)} -> {_num(g.candidate)} {'pass' if g.passed else 'FAIL'}"


def _quality(q: QualityRow) -> str:
    """E.g. 'roc_auc 0.7123 (model's own 0.9512)'."""
    own = f" (model's own {_num(q.reference)})" if q.reference is not None else ""
    return f"{q.metric} {_num(q.current)}{own}" if q.current is not None else f"{q.metric} -"


def _estimated(ev: Evidence) -> str:
    """The card's estimate lines, e.g. 'rmse: estimated 97.3 (90% band 88.1 to 106.5), no labels
    yet', under a warning when the estimate is the only quality evidence."""
    from tasks.approval.card import estimate_lines

    lines = [line.replace("`", "") for line in estimate_lines(ev)]
    if ev.estimated_only:
        lines.insert(0, "the evidence is an estimate: no labels judged this window")
    return "\n".join(lines)


def _drift(ev: Evidence, limit: int = 5) -> str:
    """The summary, then e.g. 'temp wasserstein 0.31 (threshold 0.1)', as the card lists them."""
    lines = [ev.drift_summary] if ev.drift_summary else []
    lines += [
        f"{d.column} {d.method} {_num(d.score)} (threshold {_num(d.threshold)})"
        for d in ev.drift[:limit]
    ]
    if len(ev.drift) > limit:
        lines.append(f"... and {len(ev.drift) - limit} more")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"
