"""Hostile input: every malformed request to the predictor, the transformer or the ingress gets a
4xx with a JSON error (never a 5xx, never a 2xx), and a valid request succeeds right after it."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serving.conftest import feature_row

pytestmark = pytest.mark.integration

PREDICT = "/v1/models/churn:predict"
EXPLAIN = "/v1/models/churn:explain"
INFER = "/v2/models/churn/infer"
JSON = {"content-type": "application/json"}


@dataclass
class Case:
    name: str
    path: str = PREDICT
    body: bytes | None = None
    headers: dict | None = None
    method: str = "POST"
    raw: bytes | None = None  # sent as is over a socket instead
    half_close: bool = False  # the client stops sending after ``raw`` (a truncated body)


def _json(value) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _v1_cases(row: dict) -> list[Case]:
    def instances(*rows, **kw) -> Case:
        return Case(kw.pop("name"), body=_json({"instances": list(rows)}), headers=JSON, **kw)

    def cell(name: str, feature: str, raw_value: str) -> Case:  # a value JSON cannot say via json.dumps
        text = json.dumps({"instances": [{**row, feature: "@@"}]}).replace('"@@"', raw_value)
        return Case(name, body=text.encode(), headers=JSON)

    cases = [
        Case("malformed JSON", body=b'{"instances": [', headers=JSON),
        Case("empty body", body=b"", headers=JSON),
        Case("JSON null", body=b"null", headers=JSON),
        Case("JSON list", body=b"[]", headers=JSON),
        Case("JSON string", body=b'"instances"', headers=JSON),
        Case("JSON number", body=b"123", headers=JSON),
        Case("instances is an object", body=_json({"instances": {"customer_id": 1}}), headers=JSON),
        Case("instances is a string", body=_json({"instances": "all"}), headers=JSON),
        Case("instances empty", body=_json({"instances": []}), headers=JSON),
        Case("extra top-level key", body=_json({"instances": [row], "x": 1}), headers=JSON),
        Case("V2 body on V1", body=_json({"inputs": []}), headers=JSON),
        instances(None, name="null instance"),
        instances(5, name="number instance"),
        instances("row", name="string instance"),
        instances({k: v for k, v in row.items() if k != "contract"}, name="missing feature"),
        instances({**row, "favourite_colour": 1}, name="extra feature"),
        cell("NaN", "monthly_charges", "NaN"),
        cell("Infinity", "monthly_charges", "Infinity"),
        cell("-Infinity", "monthly_charges", "-Infinity"),
        cell("1e400", "monthly_charges", "1e400"),
        cell("2^64", "support_calls", str(2 ** 64)),
        cell("-2^70", "support_calls", str(-(2 ** 70))),
        cell("10^400 integer", "support_calls", "1" + "0" * 400),
        instances({**row, "monthly_charges": "50.0"}, name="string for number"),
        instances({**row, "support_calls": True}, name="boolean for number"),
        instances({**row, "monthly_charges": None}, name="null for number"),
        instances({**row, "monthly_charges": [1.0]}, name="list for number"),
        instances({**row, "monthly_charges": {"v": 1}}, name="object for number"),
        instances({**row, "contract": 3}, name="number for string"),
        instances({**row, "contract": "x" * 300}, name="string too long"),
        instances({**row, "support_calls": 1.5}, name="fraction for integer"),
        instances(list(row.values())[:-1], name="list row too short"),
        Case("depth bomb (instances)", body=('{"instances": ' + _nested(100_000) + "}").encode(), headers=JSON),
        cell("depth bomb (cell)", "monthly_charges", _nested(5_000)),
        instances(*([row] * 1001), name="too many instances"),
        Case("body over the size limit", body=b'{"instances": [' + b" " * (2 * 1024 * 1024) + b"]}", headers=JSON),
        Case("text/plain body", body=_json({"instances": [row]}), headers={"content-type": "text/plain"}),
        Case("octet-stream body on V1", body=_json({"instances": [row]}),
             headers={"content-type": "application/octet-stream"}),
        Case("invalid UTF-8", body=b'{"instances": [{"contract": "\xff\xfe"}]}', headers=JSON),
        Case("unknown model", path="/v1/models/no-such-model:predict", body=_json({"instances": [row]}), headers=JSON),
        Case("unknown verb", path="/v1/models/churn:frobnicate", body=_json({"instances": [row]}), headers=JSON),
        Case("GET on predict", method="GET"),
        Case("repository API", path="/v2/repository/models/churn/load", body=b"{}", headers=JSON),
        instances({"customer_id": "7"}, name="entity id as string"),
        instances({"customer_id": 7.5}, name="entity id as fraction"),
        instances({"customer_id": -1}, name="negative entity id"),
        instances({"customer_id": True}, name="entity id as boolean"),
        instances({"customer_id": 2 ** 70}, name="entity id too large"),
        instances({"customer_id": 987654321}, name="unknown entity"),
        instances({"customer_id": 1}, row, name="mixed kinds"),
        Case("explain too many rows", path=EXPLAIN, body=_json({"instances": [row] * 21}), headers=JSON),
        Case("explain malformed", path=EXPLAIN, body=b"{", headers=JSON),
    ]
    return cases


def _v2_cases(good: dict) -> list[Case]:
    def changed(label: str, index: int = 0, **fields) -> Case:
        request = json.loads(json.dumps(good))
        request["inputs"][index].update(fields)
        return Case(label, path=INFER, body=_json(request), headers=JSON)

    def binary(name: str, length: str | None, body: bytes) -> Case:
        headers = {"content-type": "application/octet-stream"}
        if length is not None:
            headers["inference-header-content-length"] = length
        return Case(name, path=INFER, body=body, headers=headers)

    header = _json({"inputs": [{"name": "tenure_months", "shape": [1], "datatype": "INT64",
                                "parameters": {"binary_data_size": 8}}]})
    return [
        Case("V2 malformed JSON", path=INFER, body=b"{", headers=JSON),
        Case("V2 no inputs", path=INFER, body=b"{}", headers=JSON),
        Case("V2 inputs not a list", path=INFER, body=_json({"inputs": 5}), headers=JSON),
        Case("V2 inputs empty", path=INFER, body=_json({"inputs": []}), headers=JSON),
        Case("V2 input without shape", path=INFER, body=_json({"inputs": [{"name": "tenure_months"}]}),
             headers=JSON),
        changed("V2 wrong datatype", 1, datatype="BOOL"),
        changed("V2 shape mismatch", 0, shape=[3]),
        changed("V2 negative shape", 0, shape=[-1]),
        changed("V2 huge shape", 0, shape=[10 ** 12]),
        changed("V2 strings for numbers", 1, data=["x", "y"]),
        changed("V2 null data", 1, data=None),
        changed("V2 nested data", 1, data=[[[1.0]], [[2.0]]]),
        changed("V2 unknown datatype", 0, datatype="COMPLEX128"),
        changed("V2 unknown input", 0, name="favourite_colour"),
        Case("V2 duplicate inputs", path=INFER, body=_json({"inputs": good["inputs"] + good["inputs"][:1]}),
             headers=JSON),
        Case("V2 missing features", path=INFER, body=_json({"inputs": good["inputs"][1:]}), headers=JSON),
        Case("V2 NaN", path=INFER, headers=JSON,
             body=_json(good).replace(json.dumps(good["inputs"][1]["data"]).encode(), b"[NaN, 1.0]")),
        changed("V2 huge number", 1, data=[1e300 * 10 ** 10, 1.0]),
        Case("V2 depth bomb", path=INFER, body=('{"inputs": ' + _nested(100_000) + "}").encode(), headers=JSON),
        Case("V2 parameters not an object", path=INFER, body=_json({**good, "parameters": "x"}), headers=JSON),
        Case("V2 outputs not a list", path=INFER, body=_json({**good, "outputs": 7}), headers=JSON),
        Case("V2 unknown model", path="/v2/models/nope/infer", body=_json(good), headers=JSON),
        binary("binary length not a number", "abc", header + b"\0" * 8),
        binary("binary length negative", "-1", header + b"\0" * 8),
        binary("binary length in exponent form", "1e3", header + b"\0" * 8),
        binary("binary length beyond the body", "99999", header + b"\0" * 8),
        binary("binary length absurd", "9" * 30, header + b"\0" * 8),
        binary("binary length empty", "", header + b"\0" * 8),
        binary("binary header missing", None, header + b"\0" * 8),
        binary("binary JSON part malformed", str(len(header) - 3), header + b"\0" * 8),
        binary("binary data shorter than declared", str(len(header)), header + b"\0" * 3),
        binary("binary JSON part is a list", "2", b"[]" + b"\0" * 8),
    ]


def _raw_cases(host: str) -> list[Case]:
    def raw(name: str, data: bytes, half_close: bool = False) -> Case:
        return Case(name, raw=data, half_close=half_close)

    body = _json({"instances": [{"customer_id": 1}]})
    start = f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()
    return [
        raw("garbage request line", b"HELLO\r\n\r\n"),
        raw("bad method", b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        raw("bad HTTP version", f"POST {PREDICT} HTTP/9.9\r\nHost: x\r\n\r\n".encode()),
        raw("Content-Length not a number", start + b"Content-Length: abc\r\n\r\n" + body),
        raw("negative Content-Length", start + b"Content-Length: -5\r\n\r\n" + body),
        raw("two Content-Lengths", start + b"Content-Length: 5\r\nContent-Length: 50\r\n\r\n" + body),
        raw("Content-Length and chunked", start + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"5\r\nhello\r\n0\r\n\r\n"),
        raw("Content-Length shorter than the body", start + b"Content-Length: 10\r\nConnection: close\r\n\r\n" + body),
        raw("Content-Length longer than the body", start + b"Content-Length: 500\r\n\r\n" + body, half_close=True),
        raw("bad chunk size", start + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        raw("chunk without CRLF", start + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
        raw("huge header", start + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
        raw("many headers", start + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 30) for i in range(2000)) + b"\r\n"),
        raw("huge URL", b"POST /" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        raw("NUL in a header", start + b"X-A: a\0b\r\nContent-Length: 2\r\n\r\n{}"),
        raw("header without colon", start + b"NoColonHere\r\nContent-Length: 2\r\n\r\n{}"),
        raw("non-ASCII path", "POST /v1/models/chürn:predict HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
        raw("upgrade to h2c", f"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                              "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".encode()),
    ]


def _send_raw(base: str, case: Case) -> tuple[int | None, bytes]:
    """Status and body of the first response on a fresh connection (None: closed without one)."""
    address = urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        try:
            sock.sendall(case.raw)
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read that answer
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    if not data:
        return None, b""
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value.strip())
    return len(data) + 1


def _problem(status: int | None, body: bytes, allow_no_answer: bool) -> str | None:
    if status is None:
        return None if allow_no_answer else "no response"
    if not 400 <= status < 500:
        return f"status {status}: {body[:200]!r}"
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"status {status} without a JSON error: {body[:200]!r}"
    return None if isinstance(error, str) and error else f"empty error: {body[:200]!r}"


@pytest.fixture(scope="module")
def cases(world) -> list[Case]:
    from tests.serving.test_api import v2_request

    spec = world.settings.dataset_spec()
    row = feature_row(world)
    return _v1_cases(row) + _v2_cases(v2_request(world.data[spec.features].iloc[:2], spec))


@pytest.mark.parametrize("target", ["predictor", "transformer", "ingress"])
def test_hostile_input_gets_a_4xx_json_error_and_breaks_nothing(world, deployment, cases, target):
    base = deployment.endpoint if target == "ingress" else deployment.revision("stable")[target]["url"]
    every = cases + _raw_cases(urlsplit(base).netloc)
    assert len(every) >= 60
    valid = {"json": {"instances": [feature_row(world, 1)]}}
    problems = []
    with httpx.Client(timeout=60) as client:
        for case in every:
            if case.raw is not None:
                status, body = _send_raw(base, case)
            else:
                response = client.request(case.method, base + case.path, content=case.body, headers=case.headers)
                status, body = response.status_code, response.content
            problem = _problem(status, body, allow_no_answer=case.half_close)
            if problem:
                problems.append(f"{case.name}: {problem}")
            after = client.post(base + PREDICT, **valid)
            if after.status_code != 200:
                problems.append(f"{case.name}: the valid request after it got {after.status_code} {after.text[:200]}")
    assert problems == []


def test_curl_style_form_content_type_is_read_as_json(world, deployment):
    """`curl -d '{...}'` labels the body as a form; like a body without a content type, it is JSON."""
    body = _json({"instances": [{"customer_id": 3}]})
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
        response = httpx.post(deployment.predict_url(), content=body, headers=headers)
        assert response.status_code == 200 and len(response.json()["predictions"]) == 1, response.text
