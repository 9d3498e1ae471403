"""What serves and where it came from, as `driftloop lineage` and the demo's last step show it."""

from __future__ import annotations

from rich.console import Console

from driftloop.console import console, key_values


def lineage_chain(release) -> dict[str, str]:
    """bento -> model -> data rev -> commit -> retrain run -> approver and time -> evidence."""
    labels = release.labels
    keys = (
        "data_rev",
        "git_commit",
        "retrain_run",
        "approver",
        "approval_channel",
        "approved_at",
        "evidence_hash",
    )
    return {"bento": release.bento, "model_tag": release.model_tag} | {
        key: labels.get(key, "") for key in keys
    }


def render_lineage(release, out: Console = console) -> None:
    """Key: value lines with short keys, so a 64-character hash stays whole at 80 columns."""
    labels = release.labels
    dirty = " (uncommitted changes)" if labels.get("git_dirty") == "true" else ""
    rows = [
        ("endpoint", release.url),
        ("bento", release.bento),
        ("model", release.model_tag),
        ("data rev", f"{labels.get('data_rev', '?')} (DVC md5)"),
        ("git commit", labels.get("git_commit", "?") + dirty),
        ("params hash", labels.get("params_hash", "?")),
        ("retrain run", labels.get("retrain_run") or "- (built by hand)"),
        ("approved by", approval_text(release)),
        ("evidence hash", labels.get("evidence_hash") or "-"),
    ]
    if labels.get("image"):
        rows.append(("image", labels["image"]))
    rows.append(("serving since", release.started_at))
    out.print("[bold]what is serving[/]")
    out.print(key_values(rows, sep=""))  # "approved by  cli:alice", as it always read


def approval_text(release) -> str:
    """'cli:alice at TIME', or how it came without an approval: by hand, by whom."""
    labels = release.labels
    if labels.get("approver"):
        channel = labels.get("approval_channel")
        who = f"{channel}:{labels['approver']}" if channel else labels["approver"]
        text = f"{who} at {labels['approved_at']}" if labels.get("approved_at") else who
        if release.how != "promote":
            text += f" (then a {release.how} by {release.released_by or '?'})"
        return text
    if release.how in ("release", "rollback") and release.released_by:
        return f"- (a {release.how} by hand by {release.released_by})"
    return "- (released by hand)"
