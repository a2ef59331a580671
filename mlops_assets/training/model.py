"""The model: a scikit-learn Pipeline (numeric + categorical preprocessing and a classifier),
its metrics, and how it is logged and registered in MLflow."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from mlops_assets.data.spec import DatasetSpec

MODEL_TYPES = ("logistic_regression", "hist_gradient_boosting", "random_forest")
PRIMARY_METRIC = "roc_auc"
BACKGROUND_ROWS = 100
# skops (MLflow's safe default format) refuses types it does not know unless they are listed here.
SKOPS_TRUSTED_TYPES = ["numpy.dtype", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def build_pipeline(spec: DatasetSpec, model_type: str, params: Mapping[str, object], seed: int):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    prep = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), list(spec.numeric)),
        ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(spec.categorical)),
    ], verbose_feature_names_out=False)
    classifiers = {
        "logistic_regression": lambda: LogisticRegression(max_iter=1000, **params),
        "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=seed, **params),
        "random_forest": lambda: RandomForestClassifier(random_state=seed, n_jobs=1, **params),
    }
    return Pipeline([("prep", prep), ("clf", classifiers[model_type]())])


def positive_scores(model, frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """P(target = 1) for each row."""
    return model.predict_proba(frame[spec.features])[:, 1]


def score(model, frame: pd.DataFrame, spec: DatasetSpec) -> dict[str, float]:
    """Holdout metrics; ROC AUC is NaN (not an error) when the frame has a single class."""
    import warnings

    from sklearn import metrics

    y = frame[spec.target].to_numpy()
    proba = positive_scores(model, frame, spec)
    if len(np.unique(y)) < 2:
        roc_auc = float("nan")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            roc_auc = float(metrics.roc_auc_score(y, proba))
    predicted = (proba >= 0.5).astype(int)
    return {
        "roc_auc": roc_auc,
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "f1": float(metrics.f1_score(y, predicted, zero_division=0)),
        "log_loss": float(metrics.log_loss(y, proba, labels=[0, 1])),
        "brier": float(metrics.brier_score_loss(y, proba)),
    }


@dataclass(frozen=True)
class RegisteredCandidate:
    name: str
    version: str
    run_id: str
    model_uri: str


def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference of them takes ~8 s in a subprocess."""
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]


def log_model_artifacts(model, train: pd.DataFrame, spec: DatasetSpec, seed: int) -> str:
    """Log the model (signature + input example) and the SHAP background; returns the model URI."""
    import mlflow
    from mlflow.models import infer_signature

    features = train[spec.features]
    example = features.head(5)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    info = mlflow.sklearn.log_model(model, name="model", signature=signature, input_example=example,
                                    pip_requirements=pip_requirements(), skops_trusted_types=SKOPS_TRUSTED_TYPES)
    background = features.sample(min(BACKGROUND_ROWS, len(features)), random_state=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "background.parquet"
        background.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="explain")
    return info.model_uri
