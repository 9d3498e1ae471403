"""Where the pipeline's stages write, relative to the project root (dvc.yaml lists the same)."""

from __future__ import annotations

from pathlib import Path

PREPARED_TRAIN = Path("artifacts/prepared/train.parquet")
PREPARED_TEST = Path("artifacts/prepared/test.parquet")
MODEL_DIR = Path("artifacts/model")
MODEL_FILE = MODEL_DIR / "model.joblib"
MODEL_META = MODEL_DIR / "meta.json"
METRICS = Path("artifacts/metrics.json")
PREDICTIONS_PLOT = Path("artifacts/plots/predictions.csv")
ESTIMATOR = MODEL_DIR / "estimator.joblib"
