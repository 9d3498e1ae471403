"""Windows past monitor.max_rows: a uniform sample, the same on a rerun, stated wherever the
window's result goes (notice, record, artifacts, report)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa

from model.capture import LABELS, PREDICTIONS, label_rows
from tasks.capture import Window, read_current, read_window, sample_batches
from tasks.monitor.outcome import monitor_record
from tasks.monitor.reports import note_report, publish_artifacts, sample_line
from tasks.notify import as_text, monitor_notice
from tests.tasks.monitor.test_capture_window import T0, project, rows, writer

WINDOW = (T0, T0 + timedelta(hours=3))


def capped(tmp_path, max_rows: int):
    proj = project(tmp_path)
    monitor = proj.config.monitor.model_copy(update={"max_rows": max_rows})
    return proj.__class__(
        config=proj.config.model_copy(update={"monitor": monitor}), path=proj.path, root=proj.root
    )


def fill(proj) -> None:
    """3,000 predictions over three hours, in 30 files; every even one labelled 2 x its x."""
    for k in range(10):
        w = writer(proj)
        for h in range(3):
            prefix = f"h{h}-f{k}-"
            w.add(PREDICTIONS, rows(100, T0 + timedelta(hours=h), timedelta(seconds=30), prefix))
            labels = [{"inference_id": f"{prefix}{i}", "label": 2.0 * i} for i in range(0, 100, 2)]
            w.add(LABELS, label_rows(labels, T0 + timedelta(hours=h + 1)))
        w.close()


def test_a_window_past_max_rows_is_a_uniform_sample_the_same_on_a_rerun(tmp_path):
    proj = capped(tmp_path, 1000)
    fill(proj)
    window = read_current.fn(proj, *WINDOW)
    frame = window.frame
    assert window.rows == 1000 and window.rows_total == 3000 and window.sampled
    assert window.sample_note == "sampled 1,000 of 3,000 rows"
    written = {f"h{h}-f{k}-{i}" for h in range(3) for k in range(10) for i in range(100)}
    assert frame["inference_id"].is_unique and set(frame["inference_id"]) <= written
    # each row keeps its own features and its own label
    index = frame["inference_id"].str.rsplit("-", n=1).str[1].astype(int)
    assert (frame["x"] == index).all()
    even = index % 2 == 0
    assert (frame.loc[even, "label"] == 2.0 * index[even]).all()
    assert frame.loc[~even, "label"].isna().all()
    assert window.label_coverage == even.mean()
    # spread over the window: each hour holds about a third (exact for this fixed seed)
    per_hour = frame["inference_id"].str[:2].value_counts().sort_index().tolist()
    assert all(280 <= n <= 390 for n in per_hour) and sum(per_hour) == 1000
    again = read_current.fn(proj, *WINDOW)
    assert again.frame["inference_id"].tolist() == frame["inference_id"].tolist()


def test_a_window_under_max_rows_is_read_whole(tmp_path):
    proj = capped(tmp_path, 5000)
    fill(proj)
    window = read_current.fn(proj, *WINDOW)
    whole = read_window(proj, *WINDOW)
    assert window.rows == whole.rows == 3000 and window.rows_total == 3000
    assert not window.sampled and window.sample_note is None
    assert window.frame.equals(whole.frame)
    assert list(window.frame.columns) == [
        "x",
        "c",
        "inference_id",
        "timestamp",
        "bento",
        "model",
        "prediction",
        "probabilities",
        "label",
    ]


def test_sampling_in_batches_keeps_every_row_equally_likely():
    """Bottom-k over many small batches: exactly k rows, in scan order, each about k/n often."""
    n, k, trials = 1000, 100, 400
    table = pa.table({"i": np.arange(n)})
    counts = np.zeros(n)
    for seed in range(trials):
        sample, total = sample_batches(table.to_batches(max_chunksize=37), table.schema, k, seed)
        picked = sample.column("i").to_numpy()
        assert total == n and len(picked) == k and len(set(picked)) == k
        assert (np.diff(picked) > 0).all()
        counts[picked] += 1
    assert abs(counts[: n // 2].mean() - counts[n // 2 :].mean()) < 2.0  # both about 40
    assert counts.min() > 15 and counts.max() < 70


def test_the_record_and_the_artifacts_say_how_the_window_was_sampled(tmp_path, monkeypatch):
    from tasks.monitor.outcome import Assessment
    from tasks.monitor.results import CheckResult

    proj = capped(tmp_path, 1000)
    fill(proj)
    window = read_current.fn(proj, *WINDOW)
    result = CheckResult.model_validate(
        {"verdict": "no_drift", "message": "No drift.", "drift_share_threshold": 0.3}
    )
    seen = Assessment(usable=True, quality_breached=False, wrong=False)
    record = monitor_record(proj, "r1", *WINDOW, "b:1", "rev", result, window, seen, [])
    assert (record.rows, record.rows_total) == (1000, 3000)
    assert record.sample == "sampled 1,000 of 3,000 rows"
    written = {}
    monkeypatch.setattr(
        "tasks.monitor.reports.create_markdown_artifact", lambda md, **_: written.update(md=md)
    )
    publish_artifacts.fn(proj, result, "h", "May", [], sample=window.sample_note)
    assert "Window: May (sampled 1,000 of 3,000 rows, monitor.max_rows)" in written["md"]
    whole = Window(start=None, end=None, frame=window.frame, label_coverage=0.5)
    plain = monitor_record(proj, "r2", *WINDOW, "b:1", "rev", result, whole, seen, [])
    assert (plain.rows, plain.rows_total, plain.sample) == (1000, 1000, None)
    notice = as_text(monitor_notice(proj, result, "May", "b:1", {}, sample=window.sample_note))
    assert "sampled 1,000 of 3,000 rows (monitor.max_rows)" in notice
    assert "sampled" not in as_text(monitor_notice(proj, result, "May", "b:1", {}))


def test_the_report_is_headed_by_the_sample(tmp_path):
    report = tmp_path / "r.html"
    report.write_text('<html><body>\n<div id="root_metric_1"></div></body></html>')
    note_report(report, sample_line("sampled 1,000 of 3,000 rows", 1000, False))
    html = report.read_text()
    assert html.index('id="driftloop-sample"') < html.index('id="root_metric_1"')
    assert (
        "<p>Window sampled 1,000 of 3,000 rows uniformly (monitor.max_rows); the checks ran on "
        "that sample</p>"
    ) in html
    assert sample_line("sampled 1,000 of 3,000 rows", 500, True).endswith(
        ", this report shows 500 of them"
    )
