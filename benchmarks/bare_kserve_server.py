"""Baseline for the serving benchmark: a bare ``kserve.ModelServer`` with the same scikit-learn model.

Run by benchmarks/serving_benchmark.py as a subprocess:
    python benchmarks/bare_kserve_server.py --http_port 8090 --model_uri models:/churn/1
(the flags are read by kserve's own argument parser too; it binds 0.0.0.0, as KServe does).
"""

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import kserve  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402


class BareSklearnModel(kserve.Model):
    def __init__(self, name: str, model_uri: str):
        super().__init__(name)
        self.model_uri = model_uri
        self.pipeline = None
        self.features: list[str] = []

    def load(self) -> bool:
        self.pipeline = mlflow.sklearn.load_model(self.model_uri)
        self.features = [column.name for column in mlflow.models.get_model_info(self.model_uri).signature.inputs.inputs]
        self.ready = True
        return True

    def predict(self, payload, headers=None):
        frame = pd.DataFrame(payload["instances"], columns=self.features)
        return {"predictions": self.pipeline.predict_proba(frame)[:, 1].tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--model_uri", required=True)
    parser.add_argument("--model_name", default="churn")
    args, _ = parser.parse_known_args()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    model = BareSklearnModel(args.model_name, args.model_uri)
    model.load()
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False).start([model])
