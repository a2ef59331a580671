"""Which revision a request belongs to: the ingress names it in a header; a process serving direct
calls falls back to its own revision. Shared by the server, the predictor and the transformer.

Sticky assignment: :func:`canary_bucket` maps an entity id to one of 10,000 buckets by a stable hash
(BLAKE2b, the same in every process and across restarts); a request is the canary's when its entity's
bucket is below ``percent * 100``. A customer therefore sees one revision for a given canary weight,
and raising the weight only moves customers from stable to canary, never back.
"""

import hashlib

REVISION_HEADER = "x-mlops-revision"
SHADOW_HEADER = "x-mlops-shadow"  # set by the ingress on the copy of a request sent to a shadow challenger
REVISIONS = ("stable", "canary")
BUCKETS = 10_000


def request_revision(headers: dict | None, default: str) -> str:
    """The ingress names the revision a request was routed to; direct calls use the process flag."""
    value = (headers or {}).get(REVISION_HEADER)
    return value if value in REVISIONS else default


def is_shadow(headers: dict | None) -> bool:
    """Whether this request is the ingress's copy for a shadow challenger (nobody reads its answer)."""
    return (headers or {}).get(SHADOW_HEADER) == "1"


def canary_bucket(entity_id: int | str) -> int:
    """The entity's bucket in [0, BUCKETS): stable across processes, restarts and machines."""
    digest = hashlib.blake2b(str(entity_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def sticky_is_canary(entity_id: int | str, percent: int) -> bool:
    return canary_bucket(entity_id) < percent * (BUCKETS // 100)
