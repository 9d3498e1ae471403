"""Slack notices: Block Kit messages, one thread per model per cycle, never blocking a flow.

slack-sdk's own retry handlers deal with 429 (honouring Retry-After), 5xx, connection errors and
timeouts, with backoff. Without a bot token, or when Slack stays down, the notice goes to the log
instead and the caller gets `delivered=False`: a notice never fails the run that sends it, and
never holds it longer than its retries: a Retry-After longer than `notify.timeout_seconds` is
not waited for.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from config.loader import Project
from config.secrets import secrets
from tasks.evidence import outside_note

log = logging.getLogger("driftloop.notify")


class Notice(BaseModel):
    text: str  # the fallback line: notifications, the log, screen readers
    blocks: list[dict[str, Any]] = []


class Delivery(BaseModel):
    delivered: bool
    channel: str
    ts: str | None = None  # the message's id in Slack
    thread_ts: str | None = None
    error: str | None = None


class Thread(BaseModel):
    channel: str
    ts: str
    opened_at: str
    reason: str


class BoundedRateLimitHandler(RateLimitErrorRetryHandler):
    """Retry a 429 after its Retry-After, unless that is longer than `max_wait` seconds: a flow
    must not sleep for an hour because Slack asked it to."""

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        wait = _retry_after(response.headers) if response is not None else None
        return wait is None or wait <= self.max_wait


def _retry_after(headers: dict) -> float | None:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            text = value[0] if isinstance(value, list) else value
            try:
                return float(text)
            except (TypeError, ValueError):
                return None
    return None


def slack_client(project: Project) -> WebClient | None:
    token = secrets().slack_bot_token
    if token is None:
        return None
    notify = project.config.notify
    retries = notify.max_retries
    return WebClient(
        token=token.get_secret_value(),
        base_url=secrets().slack_api_url,
        timeout=int(notify.timeout_seconds),
        retry_handlers=[
            BoundedRateLimitHandler(retries, max_wait=notify.timeout_seconds),
            ServerErrorRetryHandler(max_retry_count=retries),
            # a read timeout surfaces as TimeoutError, not URLError: retry it too
            ConnectionErrorRetryHandler(
                max_retry_count=retries,
                error_types=[URLError, ConnectionResetError, RemoteDisconnected, TimeoutError],
            ),
        ],
    )


def post_notice(project: Project, notice: Notice, thread_ts: str | None = None) -> Delivery:
    """Post (or reply in a thread); on no token or failure, log the notice and say so."""
    channel = project.config.notify.channel
    client = slack_client(project)
    if client is None:
        log.info("notice (no SLACK_BOT_TOKEN, not sent to Slack):\n%s", as_text(notice))
        return Delivery(delivered=False, channel=channel, thread_ts=thread_ts, error="no token")
    try:
        reply = client.chat_postMessage(
            channel=channel,
            text=notice.text,
            blocks=notice.blocks or None,
            thread_ts=thread_ts,
            unfurl_links=False,
        )
    except (SlackApiError, SlackClientError, OSError) as exc:
        reason = _reason(exc)
        log.warning("Slack notice failed (%s); the notice was:\n%s", reason, as_text(notice))
        return Delivery(delivered=False, channel=channel, thread_ts=thread_ts, error=reason)
    return Delivery(
        delivered=True,
        channel=reply.get("channel", channel),
        ts=reply.get("ts"),
        thread_ts=thread_ts,
    )


def update_notice(project: Project, channel: str, ts: str, notice: Notice) -> Delivery:
    """Edit a message in place (an approval card showing its outcome)."""
    client = slack_client(project)
    if client is None:
        log.info("update (no SLACK_BOT_TOKEN):\n%s", as_text(notice))
        return Delivery(delivered=False, channel=channel, ts=ts, error="no token")
    try:
        client.chat_update(channel=channel, ts=ts, text=notice.text, blocks=notice.blocks or None)
    except (SlackApiError, SlackClientError, OSError) as exc:
        log.warning("Slack update failed (%s):\n%s", _reason(exc), as_text(notice))
        return Delivery(delivered=False, channel=channel, ts=ts, error=_reason(exc))
    return Delivery(delivered=True, channel=channel, ts=ts)


def _reason(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return f"Slack said {exc.response.status_code} {exc.response.get('error', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def as_text(notice: Notice) -> str:
    """The notice as plain text, for the log and the terminal."""
    lines = [notice.text]
    for block in notice.blocks:
        if block.get("type") in ("section", "header", "context"):
            text = block.get("text") or {}
            if text.get("text") and text["text"] != notice.text:
                lines.append(text["text"])
            for item in block.get("fields", []) + block.get("elements", []):
                if isinstance(item, dict) and item.get("text"):
                    lines.append("  " + item["text"])
    return "\n".join(lines)


# ---------------------------------------------------------------- one thread per cycle


def _threads_file(project: Project):
    return project.state_dir / "slack_threads.json"


def current_thread(project: Project) -> Thread | None:
    path = _threads_file(project)
    if not path.is_file():
        return None
    data = json.loads(path.read_text()).get(project.config.project.name)
    return Thread.model_validate(data) if data else None


def open_thread(project: Project, delivery: Delivery, reason: str) -> Thread | None:
    """Remember the message that starts a cycle; later notices of the cycle reply to it."""
    if not delivery.delivered or delivery.ts is None:
        return None
    thread = Thread(
        channel=delivery.channel,
        ts=delivery.ts,
        reason=reason,
        opened_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _write_thread(project, thread.model_dump())
    return thread


@task(cache_policy=NO_CACHE)
def close_thread(project: Project) -> None:
    """End the model's cycle: the next notice opens a new thread."""
    _write_thread(project, None)


def _write_thread(project: Project, value: dict | None) -> None:
    path = _threads_file(project)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[project.config.project.name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


# ---------------------------------------------------------------- what the monitor says


def monitor_headline(project: Project, result) -> str:
    name = project.config.project.name
    if result.bad_input:
        return f"{name}: bad {result.bad_input} data ({result.verdict})"
    parts = ["dataset drift" if result.dataset_drift else "no dataset drift"]
    quality = result.quality
    if quality is not None and quality.limit_breached:
        parts.append(f"{quality.primary} past its limit")
    estimated = result.estimated
    if estimated is not None and estimated.limit_breached:
        parts.append(f"estimated {estimated.primary} past its limit")
    if result.change is not None and result.change.verdict == "sudden_change":
        parts.append("sudden change since the last window")
    return f"{name}: {', '.join(parts)}"


def monitor_notice(
    project: Project,
    result,
    window: str,
    serving: str,
    links: dict[str, str],
    sample: str | None = None,
):
    """The Block Kit notice of one monitor run: verdict, evidence, and where to look. `sample`
    ("sampled N of M rows") says the checks saw a uniform sample of a window past max_rows."""
    top = project.config.notify.top_columns
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": monitor_headline(project, result)},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": result.message}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Window*\n{window}"},
                {"type": "mrkdwn", "text": f"*Serving*\n{serving}"},
                {"type": "mrkdwn", "text": f"*Rows*\n{_rows(result, sample)}"},
                {"type": "mrkdwn", "text": f"*Labels*\n{_coverage(result)}"},
            ],
        },
    ]
    drifted = sorted((c for c in result.columns if c.drifted), key=lambda c: -(c.score or 0))[:top]
    if drifted:
        lines = [
            f"• `{c.column}` {c.method}: {c.score:.3g} "
            f"{'<' if c.score_is_p_value else '>='} {c.threshold:.3g}"
            for c in drifted
        ]
        blocks.append(
            _section(
                f"*Drifted columns* ({result.drifted_columns} of "
                f"{result.tested_columns}; dataset drift at "
                f"{result.drift_share_threshold:.0%})\n" + "\n".join(lines)
            )
        )
    if result.quality is not None and result.quality.metrics:
        blocks.append(_section("*Quality on labelled traffic*\n" + _quality_lines(result.quality)))
    if result.estimated is not None and result.estimated.metrics:
        blocks.append(_section(_estimate_text(result.estimated)))
    if result.change is not None:
        blocks.append(_section(_change_text(result.change, top)))
    findings = [
        f for f in (result.validation.findings if result.validation else []) if f.severity != "info"
    ]
    if findings:
        blocks.append(
            _section(
                "*Data checks*\n" + "\n".join(f"• {f.verdict}: {f.message}" for f in findings[:top])
            )
        )
    if links:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": " | ".join(f"<{url}|{name}>" for name, url in links.items()),
                    }
                ],
            }
        )
    return Notice(text=monitor_headline(project, result), blocks=blocks)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}


def _rows(result, sample: str | None = None) -> str:
    dq = result.data_quality
    rows = f"{dq.rows_current} (reference {dq.rows_reference})" if dq else "-"
    return f"{rows}\n{sample} (monitor.max_rows)" if sample else rows


def _coverage(result) -> str:
    q = result.quality
    return f"{q.labelled_rows} labelled ({q.coverage:.0%})" if q else "none yet"


REFERENCE_NAMES = {"held_out": "held-out", "reference_data": "reference"}


def _quality_lines(quality) -> str:
    """Each metric on traffic beside the serving model's own value (its held-out evaluation);
    a metric that could not be computed says why."""
    lines = []
    source = REFERENCE_NAMES.get(quality.reference_source, "reference")
    for m in quality.metrics:
        if m.current is None:
            lines.append(f"• {m.name}: not computed" + (f" ({m.note})" if m.note else ""))
            continue
        ref = f" ({source} {m.reference:.4g})" if m.reference is not None else ""
        flag = ""
        if m.name == quality.primary and quality.limit is not None:
            flag = " :warning: past limit" if quality.limit_breached else " within limit"
            flag += f" {quality.limit:.4g}"
        lines.append(f"• {m.name}: {m.current:.4g}{ref}{flag}")
    if quality.status != "ok":
        lines.append(
            f"• {quality.labelled_rows} labelled rows; {quality.min_labels} needed to judge"
        )
    return "\n".join(lines)


def _estimate_text(estimated) -> str:
    """The estimate of each metric with its band, the realised value beside it once labels came."""
    method = {"cbpe": "confidence-based", "dle": "direct loss estimation"}[estimated.method]
    lines = [
        f"*Quality estimated without labels* ({method}, {estimated.confidence:.0%} band, "
        f"{estimated.rows:,} rows)"
    ]
    for m in estimated.metrics:
        seen = "no labels yet" if m.realised is None else f"realised {m.realised:.4g}"
        flag = ""
        if m.name == estimated.primary and estimated.limit is not None:
            flag = " :warning: past limit" if estimated.limit_breached else " within limit"
            flag += f" {estimated.limit:.4g}"
        lines.append(f"• {m.name}: {m.value:.4g} ({m.lower:.4g} to {m.upper:.4g}), {seen}{flag}")
    note = outside_note(estimated.outside_share)
    if note:
        lines.append(f":warning: {note}")
    return "\n".join(lines)


def _change_text(change, top: int) -> str:
    """This window against the previous usable one."""
    title = "*Against the previous window*"
    if change.previous_window:
        title += f" ({change.previous_window})"
    lines = [title, change.message]
    moved = sorted((c for c in change.columns if c.drifted), key=lambda c: -(c.score or 0))[:top]
    lines += [f"• `{c.column}` {c.method}: {c.score:.3g}" for c in moved if c.score is not None]
    return "\n".join(lines)


@task(cache_policy=NO_CACHE)
def send_notice(project: Project, notice: Notice, new_cycle_reason: str | None) -> Delivery:
    """Reply in the model's open cycle thread, or open one with this notice."""
    thread = current_thread(project)
    delivery = post_notice(project, notice, thread_ts=thread.ts if thread else None)
    if thread is None and new_cycle_reason:
        open_thread(project, delivery, new_cycle_reason)
    return delivery
