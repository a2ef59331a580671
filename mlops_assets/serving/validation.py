"""Strict checks on what clients send, shared by the transformer and the predictor.

Every failure raises :class:`InvalidRequest` with an HTTP status and a message naming the instance
and the feature at fault; the servers turn it into a 4xx JSON error. Nothing here imports kserve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

# JSON numbers beyond 2**53 lose precision as floats; anything that large is not a feature value.
MAX_ABS_NUMBER = 2.0 ** 53
MAX_STRING_LENGTH = 256
DEFAULT_MAX_INSTANCES = 1000

NUMBER, INTEGER, STRING = "number", "integer", "string"
_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
V2_DATATYPES = {NUMBER: _INTS | {"FP16", "FP32", "FP64"}, INTEGER: _INTS | {"FP32", "FP64"}, STRING: {"BYTES"}}


class ServingError(Exception):
    """An error the servers answer with ``status`` and a JSON ``{"error": message}``."""

    status = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidRequest(ServingError, ValueError):
    """A client error (400 unless said otherwise)."""

    status = 400


@dataclass(frozen=True)
class FeatureSchema:
    """Model input columns in order, each with a kind: number, integer or string."""

    names: tuple[str, ...]
    kinds: Mapping[str, str]

    @classmethod
    def from_spec(cls, spec) -> "FeatureSchema":
        kinds = {name: (INTEGER if name in spec.integer else NUMBER) for name in spec.numeric}
        kinds.update({name: STRING for name in spec.categorical})
        return cls(tuple(spec.features), kinds)

    @classmethod
    def from_mlflow_signature(cls, signature) -> "FeatureSchema":
        kinds = {}
        for column in signature.inputs.inputs:
            type_name = str(getattr(column.type, "name", column.type)).lower()
            kinds[column.name] = (STRING if type_name == "string" else
                                  INTEGER if type_name in ("long", "integer") else NUMBER)
        return cls(tuple(kinds), kinds)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check_cell(value: Any, kind: str, where: str) -> Any:
    """Return the value if it fits the kind; booleans, NaN, infinity and huge numbers never do."""
    if kind == STRING:
        if not isinstance(value, str):
            raise InvalidRequest(f"{where} must be a string, got {_describe(value)}")
        if len(value) > MAX_STRING_LENGTH:
            raise InvalidRequest(f"{where} is longer than {MAX_STRING_LENGTH} characters")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{where} must be a number, got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where} must be finite, got {value}")
    if abs(value) > MAX_ABS_NUMBER:
        raise InvalidRequest(f"{where} is out of range (|value| > 2^53)")
    if kind == INTEGER and isinstance(value, float):
        if not value.is_integer():
            raise InvalidRequest(f"{where} must be an integer, got {value}")
        return int(value)
    return value


# Bodies sent with these content types are read as JSON: KServe reads a body without a content type
# as JSON, and `curl -d` labels its body as a form.
JSON_ALSO = ("", "application/x-www-form-urlencoded")


def check_decoded(payload: Any, headers: Mapping[str, str] | None) -> Any:
    """KServe hands over raw bytes when the content type is not JSON: read curl's default (a form)
    as JSON, refuse anything else by name."""
    if isinstance(payload, (bytes, bytearray, str)):
        content_type = (headers or {}).get("content-type", "")
        if content_type.split(";")[0].strip().lower() in JSON_ALSO:
            import orjson

            try:
                return orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(f"malformed JSON body: {exc}") from None
        raise InvalidRequest(f"request body must be JSON sent as 'Content-Type: application/json', "
                             f"got content type '{content_type}'", status=415)
    return payload


def check_instances(body: Any, max_instances: int = DEFAULT_MAX_INSTANCES) -> list:
    """The V1 envelope: a JSON object whose only key is a non-empty ``instances`` list."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object with 'instances', got {_describe(body)}")
    unexpected = sorted(set(body) - {"instances"})
    if unexpected:
        raise InvalidRequest(f"unexpected top-level keys {unexpected}; expected only 'instances'")
    if "instances" not in body:
        raise InvalidRequest("request body has no 'instances' list")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidRequest(f"'instances' must be a list, got {_describe(instances)}")
    if not instances:
        raise InvalidRequest("'instances' is empty; send at least one instance")
    if len(instances) > max_instances:
        raise InvalidRequest(f"'instances' has {len(instances)} items; the limit is {max_instances}",
                             status=413)
    return instances


def check_feature_row(row: Any, index: int, schema: FeatureSchema,
                      optional: Iterable[str] = ()) -> dict[str, Any]:
    """One instance: an object with exactly the schema's features, or a list in schema order."""
    if isinstance(row, list):
        if len(row) != len(schema.names):
            raise InvalidRequest(f"instance {index} has {len(row)} values; expected {len(schema.names)} "
                                 f"in the order {list(schema.names)}")
        row = dict(zip(schema.names, row))
    elif not isinstance(row, dict):
        raise InvalidRequest(f"instance {index} must be an object of features, got {_describe(row)}")
    missing = [name for name in schema.names if name not in row]
    if missing:
        raise InvalidRequest(f"instance {index} is missing features {missing}")
    extra = sorted(set(row) - set(schema.names) - set(optional))
    if extra:
        raise InvalidRequest(f"instance {index} has unknown features {extra}")
    return {name: check_cell(row[name], schema.kinds[name], f"instance {index} feature '{name}'")
            for name in schema.names}


def check_feature_rows(instances: Sequence[Any], schema: FeatureSchema) -> list[dict[str, Any]]:
    return [check_feature_row(row, index, schema) for index, row in enumerate(instances)]


def check_entity_id(value: Any, index: int, entity: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"instance {index} '{entity}' must be an integer id, got {_describe(value)}")
    if not 0 <= value < 2 ** 63:
        raise InvalidRequest(f"instance {index} '{entity}' is out of range")
    return value


def columns_from_v2_inputs(inputs: Sequence[Any], schema: FeatureSchema) -> dict[str, list]:
    """Open Inference Protocol request: one 1-D input tensor per feature, all of one length."""
    by_name: dict[str, Any] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidRequest(f"input '{tensor.name}' is given twice")
        by_name[tensor.name] = tensor
    missing = [name for name in schema.names if name not in by_name]
    if missing:
        raise InvalidRequest(f"inputs are missing features {missing}; send one input per feature")
    extra = sorted(set(by_name) - set(schema.names))
    if extra:
        raise InvalidRequest(f"inputs have unknown features {extra}")
    columns, length = {}, None
    for name in schema.names:
        tensor = by_name[name]
        expected = V2_DATATYPES[schema.kinds[name]]
        if tensor.datatype not in expected:
            raise InvalidRequest(f"input '{name}' has datatype {tensor.datatype}; expected one of {sorted(expected)}")
        values = _flat_tensor_values(tensor)
        shape = list(tensor.shape or [])
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or math.prod(shape) != len(values):
            raise InvalidRequest(f"input '{name}' has shape {shape} for {len(values)} values; "
                                 "expected [n] or [n, 1]")
        if length is None:
            length = len(values)
        elif len(values) != length:
            raise InvalidRequest(f"input '{name}' has {len(values)} values, others have {length}")
        columns[name] = [check_cell(value, schema.kinds[name], f"row {row} feature '{name}'")
                         for row, value in enumerate(values)]
    if not length:
        raise InvalidRequest("inputs are empty; send at least one row")
    return columns


def _flat_tensor_values(tensor) -> list:
    data = tensor.data
    if hasattr(data, "tolist"):
        data = data.tolist()
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{tensor.name}' data must be a list")
    flat = []
    for item in data:
        if isinstance(item, list):
            flat.extend(item)
        else:
            flat.append(item)
    if tensor.datatype == "BYTES":
        flat = [item.decode() if isinstance(item, bytes) else item for item in flat]
    return flat


def rows_to_columns(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in names}
