"""The flow side: ask for a decision and wait for it in a paused run, riding out server restarts.

`await_decision` posts the card, stores the request with the run and pauses for `ApprovalInput`;
it validates each input it is resumed with (an invalid one is refused and the run pauses again),
then records the decision, sealed, with the run and in the audit log, and shows it on the card.
Each pause lasts until the next deadline step (`deadline`): a reminder or the escalation is
taken and the run pauses again; the close rejects the request by timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import httpx
from prefect import flow_runs, get_client
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.states import Running

from config.loader import Project
from tasks.approval.audit import append_audit, record_refusal
from tasks.approval.card import (
    deadline_text,
    evidence_markdown,
    post_approval_card,
    reply_on_card,
    update_approval_card,
)
from tasks.approval.deadline import due_step, next_step, schedule
from tasks.approval.identity import Forged, Identity, authenticate, seal_decision
from tasks.approval.overdue import done_until, take_step
from tasks.approval.records import (
    TIMEOUT,
    UI_IDENTITY,
    ApprovalInput,
    ApprovalRequest,
    AuditEntry,
    Decision,
    iso,
    utc_now,
)
from tasks.approval.settings import ApprovalSettings, run_url
from tasks.approval.store import (
    DECISION_KEY,
    REQUEST_KEY,
    latest_request,
    read_decision,
    run_sync,
    write_input,
)
from tasks.approval.submit import check_submission
from tasks.evidence import Evidence, evidence_hash

log = logging.getLogger("driftloop.approval")

# A refused, reset or timed-out connection: the Prefect server is away (restarting, say).
SERVER_AWAY = (httpx.TransportError,)


def await_server(error: Exception, until: datetime, every: float = 0.5) -> None:
    """Block until the Prefect API answers its health check; re-raise `error` if it still does
    not at `until` (the request's final deadline: nothing could be decided after it anyway)."""
    began = time.monotonic()
    log.warning(
        "Prefect server unreachable while awaiting approval (%s: %s); waiting for it until %s",
        type(error).__name__,
        error,
        iso(until),
    )
    while utc_now() < until:
        with get_client(sync_client=True) as client:  # a new client fails fast while refused
            if client.api_healthcheck() is None:
                log.warning(
                    "Prefect server reachable again after %.1f s; still awaiting approval",
                    time.monotonic() - began,
                )
                return
        time.sleep(every)
    log.error(
        "Prefect server unreachable for %.1f s, until the approval request expired",
        time.monotonic() - began,
    )
    raise error


def _pause_for_input(
    run_id: UUID, form: type[ApprovalInput], until: datetime, poll: float, hold_until: datetime
) -> ApprovalInput:
    """`pause_flow_run` for `form` until `until` (the next deadline step), riding out Prefect
    server restarts until `hold_until` (the final deadline).

    The pause polls the server, and when its client's retries ran out during a restart (or
    across several) the error ended the paused run Failed, so the request could no longer be
    decided. Here the wait outlives the server: once it answers again, the run's state says
    whether it is still paused (wait on), was resumed meanwhile (load the input) or never got
    to pause (pause again).
    """
    while True:
        key = uuid4().hex  # never reuse a pause key: a retried run must not replay input
        try:
            return flow_runs.pause_flow_run(
                wait_for_input=form,
                timeout=max(1, math.ceil((until - utc_now()).total_seconds())),
                poll_interval=poll,
                key=key,
            )
        except SERVER_AWAY as exc:
            await_server(exc, hold_until)
        answer = _wait_on_pause(run_id, form, key, until, poll, hold_until)
        if answer is not None:
            return answer


def _wait_on_pause(
    run_id: UUID,
    form: type[ApprovalInput],
    key: str,
    until: datetime,
    poll: float,
    hold_until: datetime,
) -> ApprovalInput | None:
    """After an outage: poll while the run is in pause `key`, then load its input.

    None when the pause never began (the server went away before it took the state).
    """
    keyset = keyset_from_base_key(f"paused-{key}")
    form_checked = False
    while True:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
            state = run.state
            if key not in (run.empirical_policy.pause_keys or set()):
                return None
            if state is not None and state.is_running():
                log.info("run %s was resumed while the Prefect server was away", run_id)
                return form.load(keyset)
            if state is None or not state.is_paused():
                name = state.name if state else "no state"
                if state is not None and state.is_failed():  # the server expired the pause
                    raise FlowPauseTimeout(f"Flow run was paused and never resumed ({name}).")
                raise RuntimeError(f"run {run_id} left its approval pause for {name}")
            if not form_checked:  # the outage may have cut the pause off before its form
                if read_flow_run_input(keyset["schema"], run_id) is None:
                    form.save(keyset, run_id)
                form_checked = True
            if utc_now() >= until:
                raise FlowPauseTimeout("Flow run was paused and never resumed.")
            time.sleep(poll)
        except SERVER_AWAY as exc:
            await_server(exc, hold_until)


def await_decision(
    project: Project,
    evidence: Evidence,
    timeout_seconds: float,
    allowed_approvers: list[str] | tuple[str, ...] = (),
    poll_seconds: float | None = None,
) -> Decision:
    """Ask for a decision and wait for it; call inside a (sync) flow run.

    Posts the Slack card, stores the request with the run, and pauses for `ApprovalInput` until
    a valid decision arrives or the deadline: `timeout_seconds`, then what `approval.on_timeout`
    says (reminders or escalation for `grace_seconds` more), then a rejection by timeout.
    Invalid input (stale evidence, an approver not on the allow-list, too late) is refused,
    audited and answered in the card's thread, and the run pauses again for the time left.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("await_decision must be called inside a flow run")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("await_decision blocks: call it from a sync flow, not an async one")
    run_id = context.flow_run.id
    settings = ApprovalSettings.from_project(project)
    poll = poll_seconds if poll_seconds is not None else settings.poll_seconds
    hash_ = evidence_hash(evidence)

    # 1. an earlier attempt of this run may already hold the request, or even the decision
    existing = run_sync(read_decision, run_id, hash_)
    if existing is not None:
        return existing
    request = run_sync(latest_request, run_id)
    # who may decide comes from this flow's own config, never from what the store holds
    policy = _policy(settings, allowed_approvers)
    if request is not None and request.evidence_hash == hash_:
        request = request.model_copy(update=policy)
    else:
        now = utc_now()
        expires_at = now + timedelta(seconds=timeout_seconds)
        extended = settings.on_timeout != "reject"
        request = ApprovalRequest(
            run_id=str(run_id),
            evidence=evidence,
            evidence_hash=hash_,
            requested_at=now,
            expires_at=expires_at,
            poll_seconds=poll,
            url=run_url(project, run_id),
            on_timeout=settings.on_timeout,
            closes_at=expires_at + timedelta(seconds=settings.grace_seconds) if extended else None,
            remind_every_seconds=settings.remind_every_seconds,
            **policy,
        )
        # 2. the card in Slack, then the request stored with the run
        delivery = post_approval_card(project, request)
        request = request.model_copy(
            update={"card_channel": delivery.channel, "card_ts": delivery.ts}
        )
        write_input(run_id, REQUEST_KEY + hash_, request)
    _evidence_artifact(request)
    form = ApprovalInput.with_initial_data(description=evidence_markdown(request))

    # 3. pause until a valid decision or the next deadline step: remind, escalate or close
    steps, done = schedule(request), done_until(project, request)
    decision: Decision | None = None
    while decision is None:
        step = due_step(steps, utc_now(), done)
        if step is not None and step.kind == "close":
            break
        if step is not None:
            take_step(project, request, step)
            done = step.at
            continue
        try:
            answer = _pause_for_input(
                run_id, form, next_step(steps, done).at, poll, request.final_at
            )
        except FlowPauseTimeout:
            # take the run back from Paused, or the server fails it for never resuming
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(
                    run_id, Running(message="approval deadline step due"), force=True
                )
            continue
        decided_at = _input_time(run_id, answer) or utc_now()
        try:
            who = authenticate(project, str(run_id), answer)
            reason = check_submission(
                request, answer.evidence_hash, who.approver, who.channel, decided_at
            )
        except Forged as exc:
            who, reason = Identity("ui", answer.approver or UI_IDENTITY, answer.comment), str(exc)
        if reason:
            record_refusal(
                project,
                str(run_id),
                answer.decision,
                who.approver,
                who.channel,
                answer.evidence_hash,
                reason,
                who.comment,
            )
            reply_on_card(
                project,
                request,
                f"Refused {answer.decision} by {who.channel}:{who.approver}: {reason}",
            )
            continue
        decision = Decision(
            outcome=answer.decision,
            approver=who.approver,
            channel=who.channel,
            comment=who.comment,
            decided_at=decided_at,
            evidence_hash=hash_,
            run_id=str(run_id),
            candidate=evidence.candidate,
        )
    if decision is None:  # the close: a rejection by timeout, with no channel and no person
        decision = Decision(
            outcome="reject",
            comment=f"no decision by the deadline {deadline_text(request)}",
            decided_at=utc_now(),
            evidence_hash=hash_,
            run_id=str(run_id),
            candidate=evidence.candidate,
        )

    # 4. record it, sealed, with the run and in the audit log, then show it on the card
    decision = seal_decision(project, decision)
    write_input(run_id, DECISION_KEY + hash_, decision)
    append_audit(
        project,
        AuditEntry(
            at=decision.decided_at,
            event="decision",
            decision=decision.outcome,
            approver=decision.approver,
            channel=decision.channel or TIMEOUT,
            run_id=str(run_id),
            evidence_hash=hash_,
            comment=decision.comment,
        ),
    )
    update_approval_card(project, request, decision)
    log.info("approval for run %s: %s", run_id, decision.describe())
    return decision


def _policy(settings: ApprovalSettings, approvers: list[str] | tuple[str, ...]) -> dict:
    """Who may decide, on which channels, and who is asked past the deadline."""
    escalates = settings.on_timeout == "escalate"
    return {
        "approvers": list(approvers),
        "channels": list(settings.channels),
        "escalate_to": list(settings.escalate_to) if escalates else [],
    }


def _input_time(run_id: UUID, answer: RunInput) -> datetime | None:
    """When the server accepted this input (its record's creation time)."""
    key = getattr(getattr(answer, "metadata", None), "key", None)
    if not key:
        return None
    with get_client(sync_client=True) as client:
        items = client.filter_flow_run_input(
            flow_run_id=run_id, key_prefix=key, limit=1, exclude_keys=set()
        )
    return items[0].created if items else None


def _evidence_artifact(request: ApprovalRequest) -> None:
    create_markdown_artifact(
        evidence_markdown(request),
        key="approval-evidence",
        description=f"Evidence {request.evidence_hash} for the approval of "
        f"{request.evidence.candidate}",
    )
