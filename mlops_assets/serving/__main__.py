"""One entry point for every serving process, locally and in deploy/kserve/Dockerfile:

    python -m mlops_assets.serving --role predictor   --model_name churn --http_port 8080 [--model_version 3]
    python -m mlops_assets.serving --role transformer --model_name churn --http_port 8081 \\
        --predictor_host 127.0.0.1:8080 [--revision canary]
    python -m mlops_assets.serving --role ingress --http_port 8000      (the local ingress of every model + supervisor)
    python -m mlops_assets.serving --standby predictor|transformer      (warm pool: imports, then reads
                                                                          its arguments from stdin)
"""

from __future__ import annotations

import os

# Before numpy/sklearn load: one OpenMP thread per server; scale by processes (see DESIGN.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402

from mlops_assets.serving.prediction_log import DEFAULT_MAX_BYTES  # noqa: E402
from mlops_assets.serving.routing import REVISIONS  # noqa: E402
from mlops_assets.serving.server import DEFAULT_MAX_REQUEST_BYTES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", required=True, choices=("predictor", "transformer", "ingress"))
    parser.add_argument("--model_name", default=None, help="default: the settings' model name")
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--predictor_host", help="host:port of the predictor (transformer role)")
    parser.add_argument("--model_version", default=None, help="registry version; default @champion")
    parser.add_argument("--revision", default="stable", choices=REVISIONS)
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--predictor_timeout", type=int, default=30, help="seconds (transformer role)")
    parser.add_argument("--prediction_log_max_bytes", type=int, default=DEFAULT_MAX_BYTES)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--standby"]:
        from mlops_assets.serving.standby import wait_for_assignment

        argv = wait_for_assignment(argv[1] if len(argv) > 1 else "")
    args = parse_args(argv)
    if args.model_name is None and args.role != "ingress":  # the ingress serves every model
        from mlops_assets.settings import get_settings

        args.model_name = get_settings().model_name
    if args.role == "ingress":
        from mlops_assets.serving.ingress import run_ingress

        run_ingress(args)
    else:
        from mlops_assets.serving.server import run_model_server

        run_model_server(args)


if __name__ == "__main__":
    main()
