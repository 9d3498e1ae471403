"""What Evidently's report is built from holds nothing that could end its `<script>` block, and
two different values from traffic are still two different values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.monitor.report_html import html_safe_frame, html_safe_text


def test_values_are_inert_and_stay_distinguishable():
    values = ["</script><script>x()</script>", "&lt;", "<", "a&b", "<!--", "plain", None, np.nan]
    frame = pd.DataFrame(
        {
            "cat": values,
            "category": pd.Categorical(["<b>", "&lt;b&gt;", "<b>", "ok", None, None, "x", "y"]),
            "num": np.arange(8, dtype="float64"),
            "<col>": ["v"] * 8,
        }
    )
    safe = html_safe_frame(frame)
    strings = [v for col in ("cat", "category") for v in safe[col] if isinstance(v, str)]
    assert not [v for v in strings if "<" in v or ">" in v]
    assert safe["cat"].dropna().nunique() == frame["cat"].dropna().nunique()
    assert len(safe["category"].cat.categories) == len(frame["category"].cat.categories)
    assert safe["cat"][0] == "&lt;/script&gt;&lt;script&gt;x()&lt;/script&gt;"
    assert safe["cat"][1] != safe["cat"][2]  # "&lt;" and "<" are not confused
    assert safe["cat"][6] is None and np.isnan(safe["cat"][7])
    assert safe["num"].equals(frame["num"])
    assert list(safe.columns) == ["cat", "category", "num", "&lt;col&gt;"]
    assert frame["cat"][0].startswith("</script>")  # the caller's frame is left as it was


def test_text_mapping_is_one_to_one():
    seen = {}
    for value in ["<", ">", "&", "&lt;", "&gt;", "&amp;", "&amp;lt;", "<>", "", "a"]:
        escaped = html_safe_text(value)
        assert escaped not in seen, (value, seen.get(escaped))
        seen[escaped] = value
