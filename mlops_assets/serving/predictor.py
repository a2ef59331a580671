"""The predictor: a ``kserve.Model`` running the registered scikit-learn pipeline.

Loads ``models:/<name>@champion`` (or a given version) through MLflow, answers V1 ``:predict`` and
``:explain`` and V2 ``/infer``. Inputs are checked against the model signature; a linear pipeline
is compiled to a few numpy operations (checked against ``predict_proba`` at load), which is most of
why this server is faster than a bare one. Imported only by server processes (it imports kserve).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from mlops_assets.serving.metrics import ServerMetrics
from mlops_assets.serving.routing import request_revision
from mlops_assets.serving.validation import (
    INTEGER,
    STRING,
    FeatureSchema,
    InvalidRequest,
    check_decoded,
    check_feature_rows,
    check_instances,
    columns_from_v2_inputs,
    rows_to_columns,
)
from mlops_assets.settings import Settings

log = logging.getLogger("mlops.serving.predictor")

MAX_EXPLAIN_ROWS = 20
FAST_PATH_TOLERANCE = 1e-9


@dataclass
class Batch:
    """Validated model input: one list per feature, and the protocol the answer goes back in."""

    columns: dict[str, list]
    size: int
    protocol: str  # "v1" | "v2"
    revision: str
    request_id: str | None = None


@dataclass
class LoadedModel:
    pipeline: Any
    version: str
    run_id: str
    schema: FeatureSchema
    background: pd.DataFrame | None


def load_registered_model(settings: Settings, name: str, version: str | None) -> LoadedModel:
    """The pipeline, its signature's feature schema and the SHAP background of one registry version."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    entry = (client.get_model_version(name, str(version)) if version
             else client.get_model_version_by_alias(name, "champion"))
    uri = f"models:/{name}/{entry.version}"
    pipeline = mlflow.sklearn.load_model(uri)
    signature = mlflow.models.get_model_info(uri).signature
    schema = (FeatureSchema.from_mlflow_signature(signature) if signature is not None
              else FeatureSchema.from_spec(settings.dataset_spec()))
    return LoadedModel(pipeline, str(entry.version), entry.run_id, schema,
                       _load_background(entry.run_id))


def _load_background(run_id: str) -> pd.DataFrame | None:
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="explain/background.parquet")
    except Exception as exc:  # a model without a background still predicts; :explain says why not
        log.warning("no SHAP background for run %s: %s", run_id, exc)
        return None
    return pd.read_parquet(path)


def columns_to_frame(columns: dict[str, list], schema: FeatureSchema) -> pd.DataFrame:
    dtypes = {INTEGER: "int64", STRING: "object"}
    return pd.DataFrame({name: pd.Series(columns[name], dtype=dtypes.get(schema.kinds[name], "float64"))
                         for name in schema.names})


def compile_linear_scorer(pipeline, schema: FeatureSchema) -> Callable[[dict], np.ndarray] | None:
    """``predict_proba[:, 1]`` of Pipeline(ColumnTransformer(scaled numeric, one-hot), LogisticRegression)
    as plain numpy on validated columns; None for any other pipeline shape."""
    from scipy.special import expit
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        return None
    prep, clf = pipeline.steps[0][1], pipeline.steps[1][1]
    if (not isinstance(prep, ColumnTransformer) or not isinstance(clf, LogisticRegression)
            or list(clf.classes_) != [0, 1]):
        return None
    weights, offset = clf.coef_[0], 0
    numeric: list[tuple[str, float, float, float]] = []  # column, mean, scale, weight
    categorical: list[tuple[str, dict]] = []  # column, {category: weight}
    for _, transformer, columns in prep.transformers_:
        if isinstance(transformer, str):
            if transformer == "drop":
                continue
            return None
        if len(columns) == 0:  # e.g. the categorical branch of a numeric-only dataset: never fitted
            continue
        steps = [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
        # A median imputer is the identity here: validation rejects missing values.
        steps = [step for step in steps if not isinstance(step, SimpleImputer)]
        if len(steps) != 1 or not all(isinstance(column, str) for column in columns):
            return None
        step = steps[0]
        if isinstance(step, StandardScaler):
            means = step.mean_ if step.mean_ is not None else np.zeros(len(columns))
            scales = step.scale_ if step.scale_ is not None else np.ones(len(columns))
            for i, column in enumerate(columns):
                numeric.append((column, means[i], scales[i], weights[offset + i]))
            offset += len(columns)
        elif (isinstance(step, OneHotEncoder) and step.drop_idx_ is None
              and step.handle_unknown == "ignore" and not getattr(step, "_infrequent_enabled", False)):
            for column, categories in zip(columns, step.categories_):
                categorical.append((column, {str(c): weights[offset + j] for j, c in enumerate(categories)}))
                offset += len(categories)
        else:
            return None
    if offset != len(weights):
        return None
    names = [c[0] for c in numeric]
    means = np.array([c[1] for c in numeric])
    scales = np.array([c[2] for c in numeric])
    numeric_weights = np.array([c[3] for c in numeric])
    intercept = clf.intercept_[0]

    def score(columns: dict[str, list]) -> np.ndarray:
        values = np.array([columns[name] for name in names], dtype=np.float64).T
        z = ((values - means) / scales) @ numeric_weights + intercept
        for column, table in categorical:
            z = z + np.array([table.get(value, 0.0) for value in columns[column]])
        return expit(z)

    return score


class ChurnPredictor(Model):
    def __init__(self, name: str, settings: Settings, model_version: str | None = None,
                 metrics: ServerMetrics | None = None, revision: str = "stable", max_instances: int = 1000):
        super().__init__(name)
        self.settings = settings
        self.metrics = metrics or ServerMetrics(name, "predictor")
        self.revision = revision
        self.requested_version = model_version
        self.max_instances = max_instances
        self.model: LoadedModel | None = None
        self.load_error: str | None = None
        self.explainer_warm = False
        self._score: Callable[[dict], np.ndarray] | None = None

    @property
    def model_version(self) -> str | None:
        return self.model.version if self.model else None

    def load(self) -> bool:
        """Load once; a failure leaves the predictor not ready (never retried per request)."""
        if self.model is not None or self.load_error is not None:
            return self.ready
        try:
            self.model = load_registered_model(self.settings, self.name, self.requested_version)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model %s version %s failed to load: %s", self.name,
                      self.requested_version or "@champion", self.load_error)
            self.ready = False
            return False
        self._score = self._choose_scorer()
        self._warm_explainer()
        self.ready = True
        log.warning("model %s version %s loaded (%s path)", self.name, self.model.version,
                    "compiled linear" if self._score != self._score_with_pipeline else "pipeline")
        return True

    def _warm_explainer(self) -> None:
        """Explain one background row before reporting ready: the first explanation pays for
        importing shap and compiling its code paths (seconds), which no client request should."""
        background = self.model.background
        if background is None or background.empty:
            return
        started = time.perf_counter()
        row = background.iloc[:1][list(self.model.schema.names)].reset_index(drop=True)
        shap_values(self.model.pipeline, background, row, self.model.schema)
        self.explainer_warm = True
        log.warning("explainer warmed in %.1f s", time.perf_counter() - started)

    def get_input_types(self) -> list[dict]:
        """Open Inference Protocol metadata: one 1-D input per feature of the model's signature."""
        if self.model is None:
            return []
        datatypes = {INTEGER: "INT64", STRING: "BYTES"}
        return [{"name": name, "datatype": datatypes.get(self.model.schema.kinds[name], "FP64"), "shape": [-1]}
                for name in self.model.schema.names]

    def get_output_types(self) -> list[dict]:
        return [{"name": "score", "datatype": "FP64", "shape": [-1]},
                {"name": "prediction", "datatype": "INT64", "shape": [-1]}]

    def _choose_scorer(self) -> Callable[[dict], np.ndarray]:
        fast = compile_linear_scorer(self.model.pipeline, self.model.schema)
        sample = self.model.background
        if fast is None or sample is None or sample.empty:
            return self._score_with_pipeline
        columns = {name: sample[name].tolist() for name in self.model.schema.names}
        if np.allclose(fast(columns), self._score_with_pipeline(columns), rtol=0, atol=FAST_PATH_TOLERANCE):
            return fast
        log.warning("compiled scorer disagrees with predict_proba; using the pipeline")
        return self._score_with_pipeline

    def _score_with_pipeline(self, columns: dict[str, list]) -> np.ndarray:
        frame = columns_to_frame(columns, self.model.schema)
        return self.model.pipeline.predict_proba(frame)[:, 1]

    def _require_ready(self) -> None:
        if not self.ready:
            raise ModelNotReady(self.name, self.load_error)

    async def preprocess(self, payload: Any, headers: dict | None = None) -> Batch:
        self._require_ready()
        request_id = (headers or {}).get("x-request-id")
        revision = request_revision(headers, self.revision)
        schema = self.model.schema
        if isinstance(payload, InferRequest):
            columns = columns_from_v2_inputs(payload.inputs, schema)
            return Batch(columns, len(columns[schema.names[0]]), "v2", revision, payload.id or request_id)
        rows = check_feature_rows(check_instances(check_decoded(payload, headers), self.max_instances), schema)
        return Batch(rows_to_columns(rows, schema.names), len(rows), "v1", revision, request_id)

    def predict(self, batch: Batch, headers: dict | None = None) -> dict | InferResponse:
        score_array = self._score(batch.columns)
        scores, classes = score_array.tolist(), (score_array >= 0.5).astype(np.int64).tolist()
        self.metrics.observe_predictions(batch.revision, scores, classes)
        if batch.protocol == "v2":
            outputs = [InferOutput("score", [batch.size], "FP64", data=scores),
                       InferOutput("prediction", [batch.size], "INT64", data=classes)]
            return InferResponse(batch.request_id or "", self.name, outputs, model_version=self.model_version)
        return {"predictions": scores, "classes": classes,
                "model_name": self.name, "model_version": self.model_version}

    def explain(self, batch: Batch, headers: dict | None = None) -> dict:
        """Per-row SHAP values (probability scale) against the run's logged background rows."""
        if batch.size > MAX_EXPLAIN_ROWS:
            raise InvalidRequest(f"explain takes at most {MAX_EXPLAIN_ROWS} rows, got {batch.size}", status=413)
        if self.model.background is None:
            raise InvalidRequest("this model version has no explain/background.parquet; "
                                 "explanations are unavailable", status=409)
        rows = columns_to_frame(batch.columns, self.model.schema)
        started = time.perf_counter()
        values, base_values = shap_values(self.model.pipeline, self.model.background, rows, self.model.schema)
        log.info("explained %d rows in %.0f ms", batch.size, (time.perf_counter() - started) * 1000)
        scores = self._score(batch.columns).tolist()
        names = list(self.model.schema.names)
        return {"model_name": self.name, "model_version": self.model_version,
                "explanations": [{"score": scores[i], "base_value": base_values[i],
                                  "shap_values": dict(zip(names, values[i]))} for i in range(batch.size)]}


def shap_values(pipeline, background: pd.DataFrame, rows: pd.DataFrame, schema: FeatureSchema
                ) -> tuple[list[list[float]], list[float]]:
    """Permutation SHAP of the churn score on raw features; string features are masked as integer
    codes (shap's tabular masker compares values numerically) and decoded before scoring."""
    import shap

    names = list(schema.names)
    combined = pd.concat([background[names], rows[names]], ignore_index=True)
    categories = {name: pd.Index(combined[name].unique()) for name in names if schema.kinds[name] == STRING}
    codes = combined.copy()
    for name, index in categories.items():
        codes[name] = index.get_indexer(combined[name])
    codes = codes.astype("float64")
    dtypes = rows[names].dtypes.to_dict()

    def churn_score(matrix: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(matrix, columns=names)
        for name, index in categories.items():
            frame[name] = index[frame[name].to_numpy().astype(int)]
        return pipeline.predict_proba(frame.astype(dtypes))[:, 1]

    n_background = len(background)
    explainer = shap.explainers.Permutation(churn_score, shap.maskers.Independent(codes.iloc[:n_background]),
                                            feature_names=names, seed=0)
    result = explainer(codes.iloc[n_background:].to_numpy())
    return result.values.tolist(), np.ravel(result.base_values).astype(float).tolist()
