"""What a retrain would do, said before anything runs (`driftloop retrain --dry-run`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from config.loader import Project
from tasks.approval.settings import allowed_identities
from tasks.commands import bin_path, run
from tasks.release.releases import read_serving
from tasks.retrain.trigger import open_retrain


@dataclass
class RetrainPlan:
    lines: list[str] = field(default_factory=list)
    blocked_by: str | None = None


def plan_retrain(project: Project, reason: str) -> RetrainPlan:
    cfg = project.config
    plan = RetrainPlan()
    serving = read_serving(project)
    plan.lines.append(f"trigger: {reason}")
    plan.lines.append(
        f"champion: {serving.model_tag} ({serving.bento})" if serving else "champion: none serving"
    )
    plan.lines.append(
        f"training set: {cfg.retrain.rule}, recent window {cfg.retrain.window_days:g} days, "
        f"latest {cfg.retrain.holdout_share:.0%} held out for the gate, "
        f"at least {cfg.retrain.min_labelled_rows} labelled rows"
    )
    status = run([bin_path("dvc"), "status"], project.root, hint="is this a DVC repository?")
    stale = [
        line.strip().rstrip(":")
        for line in status.splitlines()
        if line and not line.startswith((" ", "\t")) and line.strip().endswith(":")
    ]
    plan.lines.append(
        "dvc stages stale now: "
        + (", ".join(stale) or "none")
        + " (a new training set re-runs prepare, train, evaluate)"
    )
    gate = cfg.gate
    plan.lines.append(
        f"gate on {cfg.primary_metric}: gain >= {gate.min_improvement:g} and >= "
        f"{gate.min_relative_improvement:.0%}; guards {gate.guard_metrics or 'none'} no worse "
        f"than {gate.guard_tolerance:.0%}"
    )

    who = ", ".join(allowed_identities(cfg.approval)) or "anyone"
    plan.lines.append(
        f"approval: {who}, via {', '.join(cfg.approval.channels)}; expires after "
        f"{cfg.approval.timeout_seconds} s"
    )
    plan.blocked_by = open_retrain(project)
    if plan.blocked_by:
        plan.lines.append(f"blocked: {plan.blocked_by} holds the retrain slot")
    return plan
