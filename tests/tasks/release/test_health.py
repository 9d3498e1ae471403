"""The roll-forward's judgement: BentoML's /metrics read into counts, 5xx ratio and p95 against
the limits in config, and the smoke comparison."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.release.health import MIN_REQUESTS, Counts, HealthError, compare, judge, scrape

LABELS = 'runner_name="Predictor",service_name="bikeshare",service_version="v1"'


def metrics_text(codes: dict[str, int], buckets: dict[str, int]) -> str:
    """BentoML's exposition for /predict (plus /readyz noise that must be ignored)."""
    lines = ["# TYPE bentoml_service_request counter"]
    for code, n in codes.items():
        lines.append(
            f'bentoml_service_request_total{{endpoint="/predict",http_response_code="{code}",'
            f"{LABELS}}} {n}.0"
        )
    noise = f'endpoint="/readyz",http_response_code="503",{LABELS}'
    lines.append(f"bentoml_service_request_total{{{noise}}} 99.0")
    lines.append("# TYPE bentoml_service_request_duration_seconds histogram")
    for le, n in buckets.items():
        lines.append(
            f'bentoml_service_request_duration_seconds_bucket{{endpoint="/predict",'
            f'http_response_code="200",le="{le}",{LABELS}}} {n}.0'
        )
    return "\n".join(lines) + "\n"


@pytest.fixture
def server():
    """A loopback HTTP server answering /metrics with whatever the test sets."""
    state = {"text": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = state["text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_scrape_counts_only_predict_and_5xx(server):
    state, url = server
    state["text"] = metrics_text({"200": 90, "400": 5, "500": 3, "503": 2}, {"0.1": 80, "+Inf": 90})
    counts = scrape(url)
    assert counts.total == 100 and counts.errors == 5
    assert counts.buckets == ((0.1, 80), (float("inf"), 90))


def test_a_window_is_the_difference_of_two_scrapes(server):
    state, url = server
    state["text"] = metrics_text({"200": 100, "500": 1}, {"0.1": 100, "1.0": 100, "+Inf": 100})
    before = scrape(url)
    state["text"] = metrics_text({"200": 130, "500": 11}, {"0.1": 101, "1.0": 130, "+Inf": 130})
    seen = scrape(url).since(before)
    assert seen.total == 40 and seen.errors == 10
    with pytest.raises(HealthError, match=r"10 of 40 requests answered 5xx \(25.0% > "):
        judge(seen, max_error_ratio=0.01, max_p95=5)
    judge(seen, max_error_ratio=0.3, max_p95=5)


def test_p95_follows_prometheus_histogram_quantile():
    # 100 requests: 90 under 0.1 s, 10 between 0.5 and 1 s -> rank 95 is halfway into (0.5, 1]
    counts = Counts(total=100, buckets=((0.1, 90), (0.5, 90), (1.0, 100), (float("inf"), 100)))
    assert counts.quantile(0.95) == pytest.approx(0.75)
    with pytest.raises(HealthError, match=r"p95 latency 0\.750 s > serving\.max_p95"):
        judge(counts, max_error_ratio=0.01, max_p95=0.5)
    judge(counts, max_error_ratio=0.01, max_p95=0.8)


def test_too_few_requests_cannot_fail_on_latency():
    slow = Counts(total=MIN_REQUESTS - 1, buckets=((10.0, MIN_REQUESTS - 1),))
    judge(slow, max_error_ratio=0.01, max_p95=0.5)
    with pytest.raises(HealthError):
        judge(Counts(total=MIN_REQUESTS, buckets=((10.0, MIN_REQUESTS),)), 0.01, 0.5)


def test_smoke_comparison_names_the_first_wrong_row():
    compare([1.0, 2, "a"], [1.0 + 1e-12, 2, "a"])
    with pytest.raises(HealthError, match=r"1 of 3 .*row 1: served 2.5, offline 2.0"):
        compare([1.0, 2.5, 3.0], [1.0, 2.0, 3.0])
