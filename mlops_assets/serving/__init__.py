"""Model serving: KServe transformer and predictor processes, the local canary ingress and backend.

Only `backend_local`, `revision`, `smoke`, `validation`, `metrics` and `prediction_log` are safe to
import from the Dagster process; `predictor` and `transformer` import kserve (which parses sys.argv).
`controller` (revisions, replicas, readiness, restarts) and `protocol` (HTTP limits) run in the ingress.
"""
