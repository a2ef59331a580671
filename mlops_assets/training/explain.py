"""SHAP explanations for a fitted Pipeline: explainer chosen by model type, values in the
classifier's raw output space (log-odds), so expected value + SHAP values = raw output."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

SAMPLE_ROWS = 300


@dataclass
class Explanation:
    kind: str
    feature_names: list[str]
    expected_value: float
    values: np.ndarray  # rows x transformed features
    raw_output: np.ndarray  # the classifier's margin for the same rows
    data: np.ndarray

    def mean_abs(self) -> pd.Series:
        return pd.Series(np.abs(self.values).mean(axis=0), index=self.feature_names).sort_values(ascending=False)


def explain(pipeline, rows: pd.DataFrame, background: pd.DataFrame) -> Explanation:
    import shap

    prep, clf = pipeline.named_steps["prep"], pipeline.named_steps["clf"]
    names = list(prep.get_feature_names_out())
    x, x_background = np.asarray(prep.transform(rows), float), np.asarray(prep.transform(background), float)
    kind = type(clf).__name__
    if hasattr(clf, "coef_"):
        explainer, kind = shap.LinearExplainer(clf, x_background), "linear"
        values, expected = explainer.shap_values(x), explainer.expected_value
    elif kind in ("HistGradientBoostingClassifier", "RandomForestClassifier", "GradientBoostingClassifier"):
        # path-dependent, not interventional: shap's interventional algorithm breaks additivity for
        # HistGradientBoosting (off by ~0.1 log-odds); the path-dependent one is exact for every tree model
        explainer, kind = shap.TreeExplainer(clf, feature_perturbation="tree_path_dependent", model_output="raw"), "tree"
        values, expected = explainer.shap_values(x, check_additivity=False), explainer.expected_value
    else:
        margin = _margin_fn(clf)
        explainer, kind = shap.explainers.Permutation(margin, x_background), "permutation"
        result = explainer(x)
        values, expected = result.values, result.base_values
    values, expected = _positive_class(values, expected)
    return Explanation(kind=kind, feature_names=names, expected_value=float(np.mean(expected)),
                       values=values, raw_output=_margin_fn(clf)(x), data=x)


def _margin_fn(clf):
    if hasattr(clf, "decision_function"):
        return lambda x: np.asarray(clf.decision_function(x), float)
    return lambda x: np.asarray(clf.predict_proba(x)[:, 1], float)  # forests: probability space


def _positive_class(values, expected):
    values = np.asarray(values)
    if values.ndim == 3:  # (rows, features, classes)
        values = values[:, :, 1]
        expected = np.atleast_1d(expected)[-1]
    elif isinstance(values, list):
        values, expected = values[1], np.atleast_1d(expected)[1]
    return values, expected


def summary_plot_png(explanation: Explanation, max_display: int = 15) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    plt.figure()
    shap.summary_plot(explanation.values, explanation.data, feature_names=explanation.feature_names,
                      max_display=max_display, show=False)
    plt.title(f"SHAP summary ({explanation.kind} explainer)")
    buffer = io.BytesIO()
    plt.gcf().savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close("all")
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
