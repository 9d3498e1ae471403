"""The monitor: one window of production traffic against the serving model's reference.

The modules, in the order a window meets them: `reference` (the training data at its data rev
and its cached profile), `validate` (schema and values; the window's verdict), `settings` (the
`monitor` config section), `drift_stats` (the drift statistics), `evidently_engine` (methods
only Evidently has), `profile`, `quality` (model quality on labelled rows), `checks` (all of
them, one `CheckResult`), `window_change` (the window against the previous usable one),
`results` (its types), `report_html` and `reports` (the Evidently report and the Prefect
artifacts), `outcome` (what a run records, pushes and passes on) and `history` (the saved
results the policy reads).
"""
