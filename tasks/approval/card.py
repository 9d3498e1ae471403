"""What people see of a request: the Slack card (evidence, then the buttons or the outcome) and
the markdown shown on the Prefect UI's resume form and in the run's evidence artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from config.loader import Project
from config.schema import SLACK_USER_ID
from tasks.approval.records import UI_IDENTITY, ApprovalRequest, Decision, iso
from tasks.evidence import Evidence, outside_note
from tasks.notify import Notice, post_notice, update_notice

ACTION_APPROVE = "driftloop_approve"
ACTION_REJECT = "driftloop_reject"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _gate_lines(evidence: Evidence) -> list[str]:
    rows = [("metric", "champion", "candidate", "delta", "pass")]
    rows += [
        (g.metric, _num(g.champion), _num(g.candidate), _num(g.delta), "yes" if g.passed else "NO")
        for g in evidence.gate
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def _drift_lines(evidence: Evidence, limit: int = 10) -> list[str]:
    lines = []
    for d in evidence.drift[:limit]:
        method = f" {d.method}" if d.method else ""
        limit_text = f" (threshold {_num(d.threshold)})" if d.threshold is not None else ""
        flag = "" if d.drifted else " (not drifted)"
        lines.append(f"`{d.column}`{method}: {_num(d.score)}{limit_text}{flag}")
    if len(evidence.drift) > limit:
        lines.append(f"... and {len(evidence.drift) - limit} more")
    return lines


def quality_lines(evidence: Evidence) -> list[str]:
    """E.g. '`roc_auc`: 0.7123 on the window (serving model's own 0.9512)'."""
    lines = []
    for q in evidence.quality:
        if q.current is None:
            lines.append(f"`{q.metric}`: not computed (too few labelled rows)")
            continue
        own = f" (serving model's own {_num(q.reference)})" if q.reference is not None else ""
        lines.append(f"`{q.metric}`: {_num(q.current)} on the window{own}")
    return lines


def estimate_lines(evidence: Evidence) -> list[str]:
    """E.g. '`rmse`: estimated 97.3 (90% band 88.1 to 106.5), realised 95.0'."""
    lines = []
    for e in evidence.estimated:
        band = f"{e.confidence:.0%} band {_num(e.lower)} to {_num(e.upper)}"
        seen = "no labels yet" if e.realised is None else f"realised {_num(e.realised)}"
        lines.append(f"`{e.metric}`: estimated {_num(e.estimate)} ({band}), {seen}")
    note = outside_note(max((e.outside_share for e in evidence.estimated), default=0.0))
    return [*lines, note] if note else lines


def estimate_heading(evidence: Evidence) -> str:
    if evidence.estimated_only:
        return "Model quality, ESTIMATED without labels (the evidence is an estimate)"
    return "Model quality, estimated without labels"


def evidence_markdown(request: ApprovalRequest) -> str:
    """The resume form's description in the Prefect UI, and the `pending` detail."""
    ev = request.evidence
    parts = [
        f"## Approve `{ev.candidate}` for `{ev.model}`?",
        f"**Why:** {ev.reason}",
        f"**Data rev:** `{ev.data_rev}` · **Retrain run:** `{ev.retrain_run_id}` · "
        f"**Evidence hash:** `{request.evidence_hash}` · **Deadline:** {deadline_text(request)}",
    ]
    if ev.gate:
        parts.append("### Gate: candidate vs champion")
        parts.append("| metric | champion | candidate | delta | pass |\n|---|---|---|---|---|")
        parts[-1] += "".join(
            f"\n| {g.metric} | {_num(g.champion)} | {_num(g.candidate)} | {_num(g.delta)} | "
            f"{'yes' if g.passed else 'NO'} |"
            for g in ev.gate
        )
    if ev.drift_summary or ev.drift:
        parts.append("### Drift")
        if ev.drift_summary:
            parts.append(ev.drift_summary)
        parts.extend(f"- {line}" for line in _drift_lines(ev))
    if ev.quality:
        parts.append("### Model quality")
        parts.extend(f"- {line}" for line in quality_lines(ev))
    if ev.estimated:
        parts.append(f"### {estimate_heading(ev)}")
        parts.extend(f"- {line}" for line in estimate_lines(ev))
    who = ", ".join(request.approvers) if request.approvers else "anyone"
    parts.append(
        "Choose **decision** (approve or reject) and copy the evidence hash above into "
        "**evidence_hash**: it binds the decision to this evidence, and a missing or different "
        f"hash is refused. Here you decide as `ui:{UI_IDENTITY}`, the holder of the Prefect "
        f"server's auth string; a name typed as **approver** is kept in the comment "
        f"(allowed: {who}; channels: {', '.join(request.channels)})."
    )
    return "\n\n".join(parts)


def approval_card(
    request: ApprovalRequest, decision: Decision | None = None, escalated: bool = False
) -> Notice:
    """The Block Kit card: evidence, then the buttons, or the outcome in their place."""
    ev = request.evidence
    title = f"{ev.model}: approve candidate {ev.candidate}?"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why*\n{ev.reason}"[:2900]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Data rev*\n`{ev.data_rev}`"},
                {"type": "mrkdwn", "text": f"*Candidate*\n`{ev.candidate}`"},
                {"type": "mrkdwn", "text": f"*Evidence hash*\n`{request.evidence_hash}`"},
                {"type": "mrkdwn", "text": f"*Deadline*\n{plain(deadline_text(request))}"},
            ],
        },
    ]
    if ev.gate:
        table = "\n".join(_gate_lines(ev))
        blocks.append(_mrkdwn(f"*Gate: candidate vs champion*\n```{table}```"))
    if ev.drift_summary or ev.drift:
        text = "\n".join(filter(None, [ev.drift_summary, *("• " + x for x in _drift_lines(ev))]))
        blocks.append(_mrkdwn(f"*Drift*\n{text}"))
    if ev.quality:
        text = "\n".join("• " + x for x in quality_lines(ev))
        blocks.append(_mrkdwn(f"*Model quality*\n{text}"))
    if ev.estimated:
        text = "\n".join("• " + x for x in estimate_lines(ev))
        blocks.append(_mrkdwn(f"*{estimate_heading(ev)}*\n{text}"))
    links = f"<{request.url}|Prefect run>" if request.url else ""
    cli = f"`driftloop approve {request.run_id}`"
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": " · ".join(filter(None, [links, cli]))}],
        }
    )
    if decision is None and escalated:
        blocks.append(_mrkdwn(escalation_notice(request).text))
    if decision is None:
        value = f"{request.run_id}:{request.evidence_hash}"
        blocks.append(
            {
                "type": "actions",
                "block_id": "driftloop_approval",
                "elements": [
                    _button("Approve", ACTION_APPROVE, value, "primary", "Approve and roll out?"),
                    _button("Reject", ACTION_REJECT, value, "danger", "Reject this candidate?"),
                ],
            }
        )
        return Notice(text=f"Approval needed: {title}", blocks=blocks)
    icon = {"approve": ":white_check_mark:", "reject": ":x:", "expired": ":hourglass:"}
    said = plain(decision.describe())
    mark = ":hourglass:" if decision.timed_out else icon[decision.outcome]
    line = f"{mark} *{said[:1].upper() + said[1:]}*"  # ids keep their case
    if decision.comment:
        line += f"\n> {plain(decision.comment)}"
    if decision.timed_out:
        line += "\nNothing will be promoted."
    blocks.append(_mrkdwn(line))
    return Notice(text=plain(f"{title} {decision.describe()}"), blocks=blocks)


def deadline_text(request: ApprovalRequest) -> str:
    """When the request is due and what the deadline then does (`approval.on_timeout`)."""
    due, final = iso(request.expires_at), iso(request.final_at)
    if request.on_timeout == "remind" and request.final_at > request.expires_at:
        every = f"{request.remind_every_seconds or 0:g} s"
        return f"{due}, then reminders every {every} until {final}, then rejected"
    if request.on_timeout == "escalate" and request.final_at > request.expires_at:
        who = ", ".join(request.escalate_to)
        return f"{due}, then escalated to {who} until {final}, then rejected"
    return f"{due}, then rejected"


def mention(entry: str) -> str:
    """`slack:U0123` as a Slack mention (<@U0123>); any other identity as plain text.
    Only a well-formed user id becomes a mention: never <!channel> or a link."""
    channel, _, who = entry.partition(":")
    if channel == "slack" and SLACK_USER_ID.fullmatch(who):
        return f"<@{who}>"
    return plain(entry)


def reminder_notice(request: ApprovalRequest, count: int) -> Notice:
    """The card again, in its thread, with a line saying it is still waiting."""
    card = approval_card(request)
    still = (
        f":alarm_clock: *Reminder {count}: still waiting for a decision* "
        f"(the deadline {iso(request.expires_at)} has passed; "
        f"rejected by timeout at {iso(request.final_at)})"
    )
    return Notice(text=f"Reminder: {card.text}", blocks=[_mrkdwn(still), *card.blocks])


def escalation_notice(request: ApprovalRequest) -> Notice:
    """The thread reply that asks the escalation identities, mentioning the Slack ones."""
    who = ", ".join(mention(e) for e in request.escalate_to)
    text = (
        f":rotating_light: No decision by {iso(request.expires_at)}: escalated to {who}, who may "
        f"now decide with the card's buttons or `driftloop approve {request.run_id}`. "
        f"Rejected by timeout at {iso(request.final_at)}."
    )
    return Notice(text=text, blocks=[_mrkdwn(text)])


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}


def _button(text: str, action_id: str, value: str, style: str, question: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
        "style": style,
        "confirm": {
            "title": {"type": "plain_text", "text": "Are you sure?"},
            "text": {"type": "mrkdwn", "text": question},
            "confirm": {"type": "plain_text", "text": text},
            "deny": {"type": "plain_text", "text": "Cancel"},
        },
    }


@task(cache_policy=NO_CACHE)
def post_approval_card(project: Project, request: ApprovalRequest):
    """Post the card (logged instead when there is no Slack token)."""
    return post_notice(project, approval_card(request))


@task(cache_policy=NO_CACHE)
def update_approval_card(project: Project, request: ApprovalRequest, decision: Decision):
    """Replace the buttons with the outcome."""
    if request.card_channel is None or request.card_ts is None:
        return post_notice(project, approval_card(request, decision))
    return update_notice(
        project, request.card_channel, request.card_ts, approval_card(request, decision)
    )


def reply_on_card(project: Project, request: ApprovalRequest, text: str) -> None:
    post_notice(project, Notice(text=plain(text)), thread_ts=request.card_ts)


def plain(text: str) -> str:
    """Slack's three control characters escaped: a name or comment typed by a person can never
    become a mention (`<!channel>`), a link or markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
