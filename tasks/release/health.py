"""The checks a release must pass before and after it takes traffic.

Smoke: served predictions on a sample equal the model's offline ones, and the answer names the
new bento. Watch: after the switch, the new server's own /metrics (5xx ratio, p95 latency of
/predict) stay within `serving.max_error_ratio` and `serving.max_p95_latency_seconds`, and
probes through the clients' port keep reaching the new bento.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from config.loader import Project
from model.capture import auth_headers
from tasks.commands import CommandError, run
from tasks.release.package import bentoml_env

MIN_REQUESTS = 20  # fewer requests than this cannot judge a ratio or a p95


class HealthError(RuntimeError):
    """A release failed a check; the message says which, with the numbers."""


@dataclass(frozen=True)
class SmokeSample:
    records: list[dict]
    predictions: list


def offline_sample(project: Project, model_tag: str) -> SmokeSample:
    """The model's own predictions on `serving.smoke_rows` held-out rows (in a subprocess, so the
    project's BentoML store is read whatever this process imported)."""
    out = run(
        [sys.executable, "-m", "model.smoke", model_tag, str(project.config.serving.smoke_rows)],
        project.root,
        env=bentoml_env(project),
        hint=f"is {model_tag} in the store (`bentoml models list`) and the data prepared?",
        timeout=300,
    )
    match = re.search(r"^__smoke__:(.*)$", out, re.M)
    if not match:
        raise CommandError(f"model.smoke printed no sample:\n{out[-500:]}")
    return SmokeSample(**json.loads(match.group(1)))


def predict(url: str, records: list[dict], timeout: float = 10) -> dict:
    body = {"records": records, "probe": True}  # answered like any request, never captured
    response = httpx.post(f"{url}/predict", json=body, headers=auth_headers(), timeout=timeout)
    if response.status_code != 200:
        raise HealthError(f"{url}/predict answered {response.status_code}: {response.text[:200]}")
    return response.json()


def smoke(url: str, sample: SmokeSample, bento: str, singles: int = 5) -> None:
    """Served predictions equal the offline ones and the answer carries `bento`: for the whole
    sample as one batch, then for `singles` rows one by one (which also warms the server up, so
    the watch does not judge its first, cold requests)."""
    compare(served_predictions(url, sample.records, bento), sample.predictions)
    one_by_one = [served_predictions(url, [r], bento)[0] for r in sample.records[:singles]]
    compare(one_by_one, sample.predictions[:singles])


def served_predictions(url: str, records: list[dict], bento: str) -> list:
    answer = predict(url, records)
    if answer.get("bento") != bento:
        raise HealthError(f"{url} answers as {answer.get('bento')!r}, expected {bento!r}")
    return answer["predictions"]


def compare(served: list, offline: list) -> None:
    pairs = zip(served, offline, strict=True)
    wrong = [i for i, (a, b) in enumerate(pairs) if not same(a, b)]
    if wrong:
        i = wrong[0]
        raise HealthError(
            f"{len(wrong)} of {len(served)} smoke predictions differ from the model's offline "
            f"ones (row {i}: served {served[i]!r}, offline {offline[i]!r})"
        )


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# ---------------------------------------------------------------- the watch window


@dataclass(frozen=True)
class Counts:
    """Cumulative /predict counters of one server: requests by class and latency buckets."""

    total: float = 0
    errors: float = 0  # 5xx
    buckets: tuple[tuple[float, float], ...] = ()  # (le, cumulative count), all codes

    def since(self, before: Counts) -> Counts:
        old = dict(before.buckets)
        return Counts(
            total=self.total - before.total,
            errors=self.errors - before.errors,
            buckets=tuple((le, n - old.get(le, 0)) for le, n in self.buckets),
        )

    @property
    def error_ratio(self) -> float:
        return self.errors / self.total if self.total else 0.0

    def quantile(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear inside the bucket that holds the rank."""
        if not self.buckets or self.buckets[-1][1] <= 0:
            return 0.0
        rank = q * self.buckets[-1][1]
        lower_le, lower_n = 0.0, 0.0
        for le, n in self.buckets:
            if n >= rank:
                if math.isinf(le):
                    return lower_le
                return lower_le + (le - lower_le) * (rank - lower_n) / max(n - lower_n, 1e-12)
            lower_le, lower_n = le, n
        return lower_le


def scrape(url: str) -> Counts:
    """/predict counters from a bento's /metrics (BentoML's own names)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("endpoint") != "/predict":
                continue
            if sample.name == "bentoml_service_request_total":
                total += sample.value
                if sample.labels.get("http_response_code", "").startswith("5"):
                    errors += sample.value
            elif sample.name == "bentoml_service_request_duration_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0) + sample.value
    return Counts(total=total, errors=errors, buckets=tuple(sorted(buckets.items())))


def watch(
    project: Project,
    server_url: str,
    client_url: str,
    sample: SmokeSample,
    bento: str,
    progress: Callable[[str], None] = lambda _: None,
) -> Counts:
    """Probe through the clients' URL and judge the server's own counters for `watch_seconds`.

    Fails early once MIN_REQUESTS show too many 5xx; latency is judged on the whole window,
    and only over MIN_REQUESTS or more (a p95 of three requests says nothing).
    """
    limits = project.config.serving
    time.sleep(0.5)  # the server counts a request just after answering it: let the smoke land
    before = scrape(server_url)
    deadline = time.monotonic() + limits.watch_seconds
    seen = Counts()
    while True:
        probe(client_url, sample, bento)
        seen = scrape(server_url).since(before)
        progress(f"watch: {seen.total:.0f} requests, {seen.errors:.0f} 5xx")
        if seen.total >= MIN_REQUESTS and seen.error_ratio > limits.max_error_ratio:
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(limits.probe_interval_seconds)
    judge(seen, limits.max_error_ratio, limits.max_p95_latency_seconds)
    return seen


def probe(client_url: str, sample: SmokeSample, bento: str) -> None:
    """One request as a client makes it; it must succeed and reach the new bento."""
    try:
        answer = predict(client_url, sample.records[:1])
    except httpx.HTTPError as exc:
        raise HealthError(f"a probe through {client_url} failed: {exc}") from None
    if answer.get("bento") != bento:
        raise HealthError(f"a probe through {client_url} reached {answer.get('bento')!r}")


def judge(seen: Counts, max_error_ratio: float, max_p95: float) -> None:
    if seen.error_ratio > max_error_ratio:
        raise HealthError(
            f"{seen.errors:.0f} of {seen.total:.0f} requests answered 5xx "
            f"({seen.error_ratio:.1%} > serving.max_error_ratio {max_error_ratio:.1%})"
        )
    p95 = seen.quantile(0.95)
    if seen.total >= MIN_REQUESTS and p95 > max_p95:
        raise HealthError(
            f"p95 latency {p95:.3f} s > serving.max_p95_latency_seconds {max_p95:.3f} s "
            f"over {seen.total:.0f} requests"
        )
