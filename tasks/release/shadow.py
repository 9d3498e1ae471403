"""The shadow stage: live traffic mirrored to the candidate before the switch, its answers judged
against the champion's on the very same requests.

nginx's `mirror` sends every client request to the candidate as well and drops its answer;
clients only ever get the champion's. The candidate recognises a mirrored request by the
per-stage secret nginx puts in a header, captures nothing of it and writes its answer to a shadow
log. After `shadow.seconds` the mirror is turned off, the champion is asked the same records
(a probe, never captured: it is deterministic, so these are the answers clients got) and the two
are compared: for classifiers the share of changed labels and the drift of each class's
probability, for regression the relative difference and the drift of the predictions (the
monitor's drift engine). That is set against the same comparison on the gate's holdout, which is
what the approver saw: live disagreement past `max_ratio` times the holdout's plus `slack` keeps
the candidate out. Its 5xx and latency under the mirrored load are judged as the watch does.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from config.loader import Project
from config.schema import ShadowConfig
from model.capture import MIRROR_SECRET_ENV, SHADOW_DIR_ENV
from tasks.monitor.drift_stats import CategoricalSide, NumericSide, column_drift
from tasks.release.health import HealthError, judge, predict, scrape
from tasks.release.serving import slot_port, slot_url, switch_shadow
from tasks.stack.paths import stack_dir


class ShadowRefused(HealthError):
    """The candidate's live answers differ from the champion's far more than on the holdout."""


@dataclass(frozen=True)
class Comparison:
    """How far a candidate's answers are from the champion's on the same rows."""

    rows: int
    difference: float  # classifiers: share of changed labels; regression: relative difference
    drift: float  # normed Wasserstein (probabilities, predictions) or Jensen-Shannon (labels)

    def line(self) -> str:
        return f"{self.difference:.3f} apart, drift {self.drift:.3f} on {self.rows} rows"


def compare_answers(
    task: str,
    champion: list,
    candidate: list,
    champion_proba: list | None = None,
    candidate_proba: list | None = None,
) -> Comparison:
    """The candidate's answers against the champion's, row for row."""
    if len(champion) != len(candidate):
        raise ValueError(f"{len(champion)} champion answers for {len(candidate)} candidate ones")
    if not champion:
        return Comparison(rows=0, difference=0.0, drift=0.0)
    if task == "regression":
        old, new = np.asarray(champion, float), np.asarray(candidate, float)
        scale = max(float(np.mean(np.abs(old))), 1e-12)
        difference = float(np.mean(np.abs(new - old))) / scale
        drift = _numeric_drift(old, new)
    else:
        old_labels, new_labels = pd.Series(champion, dtype=str), pd.Series(candidate, dtype=str)
        difference = float((old_labels.to_numpy() != new_labels.to_numpy()).mean())
        if champion_proba is not None and candidate_proba is not None:
            old, new = np.asarray(champion_proba, float), np.asarray(candidate_proba, float)
            drift = max(_numeric_drift(old[:, j], new[:, j]) for j in range(old.shape[1]))
        else:
            drift = column_drift(
                "cat",
                CategoricalSide.of(old_labels),
                CategoricalSide.of(new_labels),
                "jensenshannon",
            ).score
    return Comparison(rows=len(champion), difference=difference, drift=drift)


def _numeric_drift(reference: np.ndarray, current: np.ndarray) -> float:
    if np.array_equal(reference, current):
        return 0.0
    stat = column_drift("num", NumericSide.of(reference), NumericSide.of(current), "wasserstein")
    return stat.score if np.isfinite(stat.score) else 1.0  # a constant champion, a moved candidate


def refusal(live: Comparison, holdout: Comparison, cfg: ShadowConfig) -> str | None:
    """Why the live disagreement is well beyond the holdout's, or None when it is not."""
    most = holdout.difference * cfg.max_ratio + cfg.slack
    most_drift = holdout.drift * cfg.max_ratio + cfg.drift_slack
    reasons = []
    if live.difference > most:
        reasons.append(
            f"live answers {live.difference:.3f} apart from the champion's > {most:.3f} "
            f"(holdout {holdout.difference:.3f} x shadow.max_ratio {cfg.max_ratio:g} "
            f"+ shadow.slack {cfg.slack:g})"
        )
    if live.drift > most_drift:
        reasons.append(
            f"drift of live predictions {live.drift:.3f} > {most_drift:.3f} (holdout "
            f"{holdout.drift:.3f} x {cfg.max_ratio:g} + shadow.drift_slack {cfg.drift_slack:g})"
        )
    return "; ".join(reasons) or None


# ---------------------------------------------------------------- the holdout comparison


def holdout_file(project: Project, model_tag: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model_tag)
    return project.state_dir / "shadow" / "holdout" / f"{name}.json"


def save_holdout_comparison(project: Project, model_tag: str, comparison: Comparison) -> Path:
    """Kept with the candidate when the gate runs: the disagreement its approver saw."""
    path = holdout_file(project, model_tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(comparison)))
    tmp.replace(path)
    return path


def load_holdout_comparison(project: Project, model_tag: str) -> Comparison | None:
    path = holdout_file(project, model_tag)
    return Comparison(**json.loads(path.read_text())) if path.is_file() else None


def holdout_comparison(task: str, champion, candidate, features: pd.DataFrame) -> Comparison:
    """Champion and candidate pipelines on the gate's holdout features."""
    proba = task != "regression" and hasattr(champion, "predict_proba")
    return compare_answers(
        task,
        champion.predict(features).tolist(),
        candidate.predict(features).tolist(),
        champion.predict_proba(features).tolist() if proba else None,
        candidate.predict_proba(features).tolist() if proba else None,
    )


# ---------------------------------------------------------------- the stage on the stack


def shadow_env(project: Project, slot: str) -> dict[str, str]:
    """The candidate server's environment for a stage: a fresh secret and an empty log."""
    directory = shadow_dir(project, slot)
    shutil.rmtree(directory, ignore_errors=True)
    return {MIRROR_SECRET_ENV: secrets.token_hex(16), SHADOW_DIR_ENV: str(directory)}


def shadow_dir(project: Project, slot: str) -> Path:
    return stack_dir(project) / "shadow" / slot


def read_shadow_log(directory: Path) -> tuple[list[dict], list, list | None]:
    """The records the candidate was mirrored, with its predictions (and probabilities)."""
    records, predictions, probabilities = [], [], []
    for path in sorted(directory.glob("answers-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short when the server stopped
            records += answer["records"]
            predictions += answer["predictions"]
            probabilities += answer["probabilities"] or []
    return records, predictions, probabilities if probabilities else None


def champion_answers(url: str, records: list[dict], batch: int) -> tuple[list, list | None]:
    """The champion's answers on the mirrored records (probes: never captured)."""
    predictions, probabilities = [], []
    for start in range(0, len(records), batch):
        answer = predict(url, records[start : start + batch], timeout=60)
        predictions += answer["predictions"]
        probabilities += answer.get("probabilities") or []
    return predictions, probabilities if probabilities else None


def run_shadow(
    project: Project,
    slot: str,
    champion_slot: str,
    secret: str,
    model_tag: str,
    progress=lambda _: None,
) -> str:
    """Mirror live traffic to `slot` for `shadow.seconds`, then judge; returns what was seen.

    Raises ShadowRefused (or HealthError for 5xx/latency); the mirror is off either way."""
    cfg = project.config.shadow
    url = slot_url(project, slot)
    before = scrape(url)
    try:
        switch_shadow(project, slot_port(project, slot), secret)
        progress(f"shadow: mirroring live traffic to slot {slot} for {cfg.seconds:g} s")
        time.sleep(cfg.seconds)
    finally:
        switch_shadow(project, None)
    time.sleep(0.5)  # the last mirrored requests land and are counted
    seen = scrape(url).since(before)
    serving = project.config.serving
    judge(seen, serving.max_error_ratio, serving.max_p95_latency_seconds)
    latency = f"p95 {seen.quantile(0.95):.3f} s over {seen.total:.0f} mirrored requests"
    records, predictions, probabilities = read_shadow_log(shadow_dir(project, slot))
    if len(records) < cfg.min_rows:
        return (
            f"shadow: {len(records)} mirrored rows < shadow.min_rows {cfg.min_rows}: too little "
            f"live traffic to compare, not judged; {latency}"
        )
    old, old_proba = champion_answers(slot_url(project, champion_slot), records, serving.max_batch)
    live = compare_answers(project.config.data.task, old, predictions, old_proba, probabilities)
    holdout = load_holdout_comparison(project, model_tag)
    if holdout is None:
        return (
            f"shadow: live {live.line()}; no holdout comparison kept for {model_tag}, "
            f"not judged; {latency}"
        )
    why = refusal(live, holdout, cfg)
    summary = f"live {live.line()}; holdout {holdout.line()}; {latency}"
    if why is not None:
        raise ShadowRefused(f"shadow stage: {why} [{summary}]")
    return f"shadow: passed: {summary}"
