"""The shadow stage's comparison: live answers against the champion's, and the refusal rule."""

from __future__ import annotations

import pytest

from config.schema import ShadowConfig
from model.capture import ShadowLog
from tasks.release.shadow import Comparison, compare_answers, read_shadow_log, refusal


def test_a_classifier_counts_changed_labels_and_probability_drift():
    champion = ["a", "a", "b", "b"]
    candidate = ["a", "b", "b", "a"]  # two of four labels changed
    same = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]]
    seen = compare_answers("binary", champion, candidate, same, same)
    assert seen == Comparison(rows=4, difference=0.5, drift=0.0)


def test_a_moved_probability_is_drift():
    champion = [[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 5
    candidate = [[0.1, 0.9]] * 10
    seen = compare_answers("binary", ["a"] * 5 + ["b"] * 5, ["b"] * 10, champion, candidate)
    assert seen.difference == 0.5
    assert seen.drift > 0.5  # half the mass moved 0.8, over a spread of 0.4


def test_regression_relative_difference():
    seen = compare_answers("regression", [10.0, 20.0, 30.0, 40.0], [11.0, 18.0, 33.0, 40.0])
    # mean |diff| = (1 + 2 + 3 + 0) / 4 = 1.5; mean |champion| = 25
    assert seen.difference == pytest.approx(0.06)
    assert seen.rows == 4


def test_identical_answers_do_not_differ():
    seen = compare_answers("regression", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert seen == Comparison(rows=3, difference=0.0, drift=0.0)


def test_answers_must_pair():
    with pytest.raises(ValueError, match="3 champion answers for 2 candidate"):
        compare_answers("regression", [1.0, 2.0, 3.0], [1.0, 2.0])


CFG = ShadowConfig(seconds=5, max_ratio=2.0, slack=0.05, drift_slack=0.1)


def test_disagreement_far_past_the_holdout_is_refused():
    holdout = Comparison(rows=100, difference=0.10, drift=0.05)
    live = Comparison(rows=300, difference=0.40, drift=0.05)  # limit 0.10 * 2 + 0.05 = 0.25
    why = refusal(live, holdout, CFG)
    assert why is not None and "0.400" in why and "> 0.250" in why


def test_disagreement_like_the_holdout_passes():
    holdout = Comparison(rows=100, difference=0.10, drift=0.05)
    assert refusal(Comparison(rows=300, difference=0.24, drift=0.19), holdout, CFG) is None


def test_drift_alone_past_its_limit_is_refused():
    holdout = Comparison(rows=100, difference=0.10, drift=0.05)
    why = refusal(Comparison(rows=300, difference=0.10, drift=0.21), holdout, CFG)
    assert why is not None and "drift of live predictions 0.210 > 0.200" in why


def test_only_nginx_secret_marks_a_mirrored_request(tmp_path):
    log = ShadowLog(tmp_path, b"s3cret")
    assert log.marks("s3cret")
    assert not log.marks("1") and not log.marks("")


def test_the_shadow_log_reads_back_what_the_candidate_answered(tmp_path):
    log = ShadowLog(tmp_path, b"x")
    log.add([{"temp": 1.0}], [3.5], None)
    log.add([{"temp": 2.0}, {"temp": 3.0}], [4.5, 5.5], None)
    with open(next(tmp_path.glob("answers-*.jsonl")), "a") as out:
        out.write('{"records": [{"temp"')  # a line cut short when the server stopped
    records, predictions, probabilities = read_shadow_log(tmp_path)
    assert records == [{"temp": 1.0}, {"temp": 2.0}, {"temp": 3.0}]
    assert predictions == [3.5, 4.5, 5.5] and probabilities is None
