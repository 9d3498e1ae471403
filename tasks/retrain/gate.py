"""The champion/challenger gate: both models scored on the same held-out recent window."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.pipeline import Pipeline

from config.loader import Project
from config.schema import METRICS
from model.evaluate import evaluate
from tasks.evidence import GateRow


@dataclass(frozen=True)
class GateResult:
    passed: bool
    rows: int
    lines: list[GateRow]
    reason: str


def gate(
    project: Project, champion: Pipeline, candidate: Pipeline, holdout: pd.DataFrame
) -> GateResult:
    cfg = project.config.gate
    old = evaluate(project, champion, holdout)
    new = evaluate(project, candidate, holdout)
    primary = project.config.primary_metric
    lines = []
    for name in [primary, *[g for g in cfg.guard_metrics if g != primary]]:
        better_high = METRICS[name][1]
        delta = (new[name] - old[name]) if better_high else (old[name] - new[name])
        scale = abs(old[name]) or 1.0
        if name == primary:
            ok = delta >= cfg.min_improvement and delta / scale >= cfg.min_relative_improvement
            rule = f"gain >= {cfg.min_improvement:g} and >= {cfg.min_relative_improvement:.0%}"
        else:
            ok = -delta / scale <= cfg.guard_tolerance
            rule = f"no worse than {cfg.guard_tolerance:.0%}"
        lines.append(
            GateRow(
                metric=name,
                champion=old[name],
                candidate=new[name],
                delta=delta,
                passed=ok,
                rule=rule,
            )
        )
    passed = all(line.passed for line in lines)
    head = lines[0]
    reason = (
        f"{primary} {head.champion:.4g} -> {head.candidate:.4g} on {len(holdout)} held-out "
        f"recent rows: {'passes' if passed else 'fails'} the gate"
    )
    failed = [f"{line.metric} ({line.rule})" for line in lines if not line.passed]
    if failed:
        reason += "; failed: " + ", ".join(failed)
    return GateResult(passed=passed, rows=len(holdout), lines=lines, reason=reason)
