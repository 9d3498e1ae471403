"""The retrain: whether to train, on what, and whether the candidate beats the serving model.

`policy` decides from the monitor's outcome, `trigger` starts one retrain run at a time, `plan`
says what a retrain would do, `trainset` builds and versions the training set, `training` runs
`dvc repro`, `gate` compares candidate and champion, and `candidate` holds the Prefect tasks the
retrain flow wires.
"""
