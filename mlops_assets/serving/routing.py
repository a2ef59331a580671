"""Which revision a request belongs to: the ingress names it in a header; a process serving direct
calls falls back to its own revision. Shared by the server, the predictor and the transformer."""

REVISION_HEADER = "x-mlops-revision"
REVISIONS = ("stable", "canary")


def request_revision(headers: dict | None, default: str) -> str:
    """The ingress names the revision a request was routed to; direct calls use the process flag."""
    value = (headers or {}).get(REVISION_HEADER)
    return value if value in REVISIONS else default
