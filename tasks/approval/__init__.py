"""One decision per approval request: the paused Prefect flow run is the record.

A retrain flow calls `await_decision`: it posts the Slack card, stores the request (evidence and
its hash) with the run, and pauses waiting for `ApprovalInput`. Slack (`asubmit_decision`), the
CLI (`submit_decision`) and the Prefect UI's resume form all resume that same run; the server
accepts exactly one resume of a paused run, so the first valid decision wins and every later
attempt is told who decided, how and when. Inputs that bypass `submit_decision` (the UI form) are
validated again in the flow; an invalid one is refused and the run pauses again.

At the deadline `approval.on_timeout` decides: `reject` closes the request as rejected by
timeout; `remind` re-posts the card in its thread at intervals and `escalate` lets
`approval.escalate_to` decide too, both for `approval.grace_seconds` more, then reject. Nothing
is promoted without a recorded decision, and a timeout's is always a rejection.

Every decision, refusal, reminder and escalation is appended to
`.driftloop/audit/approvals.jsonl` and counted in
`driftloop_approvals_total{decision,channel}` (recounted from that log on every push, so a
Pushgateway that is down loses nothing).

The modules, from the bottom up: `records` (the request, the input, the decision), `settings`
(the `approval` config section), `store` (request and decision kept as the run's inputs), `seal`
(the local decision key), `identity` (what an input proves; sealed decisions), `audit` (the log
and the metric), `card` (the Slack card and the UI's markdown), `deadline` (what on_timeout
schedules, and who may decide when), `submit` (deciding from the CLI or Slack), `overdue`
(reminders and escalation), `pending` (the requests still waiting) and `wait`
(`await_decision`, the flow side).
"""
