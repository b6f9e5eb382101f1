"""Request validators that name the offending field and never echo its value.

Connexion's stock messages start with the rejected value (``'hunter2' is too short``)
and log it at INFO: for a password that puts a secret in a response and a log. These
validators describe the problem by field name and rule only.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from typing import Any, ClassVar

from connexion.datastructures import MediaTypeDict
from connexion.exceptions import BadRequestProblem
from connexion.json_schema import Draft4RequestValidator, Draft4Validator
from connexion.utils import is_null, is_nullable
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, ParameterValidator
from connexion.validators.parameter import Draft4Validator as _StockDraft4Validator
from connexion.validators.parameter import draft4_format_checker as _draft4_format_checker
from jsonschema import ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import extend


def describe(error: ValidationError) -> str:
    """A value-free description of a JSON Schema failure."""
    rule, limit = error.validator, error.validator_value
    if rule in {"required", "additionalProperties"}:
        return str(error.message)
    reasons: dict[str, str] = {
        "type": f"must be of type {limit}",
        "minLength": f"must be at least {limit} characters long",
        "maxLength": f"must be at most {limit} characters long",
        "minimum": f"must be at least {limit}",
        "maximum": f"must be at most {limit}",
        "minItems": f"must have at least {limit} items",
        "maxItems": f"must have at most {limit} items",
        "enum": f"must be one of {_listing(limit)}",
        "format": f"must be a valid {limit}",
        "pattern": "has characters or a shape that is not allowed",
        "nullable": "must not be null",
    }
    return reasons.get(str(rule), f"is invalid ({rule})")


def _listing(values: Any) -> str:
    return ", ".join(map(str, values)) if isinstance(values, list) else str(values)


def field_path(error: ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path)


def ecma_anchors(pattern: str) -> str:
    """``pattern`` with its ``$`` anchors made to mean what they mean in JSON Schema.

    JSON Schema patterns are ECMA-262 regular expressions, where ``$`` matches only at
    the very end. Python's ``$`` also matches before a final newline, so with the stock
    validator ``'Work\\n'`` passes ``'^[^\\x00-\\x1F]*$'``: a line break slips into a
    name, an address or a subject that the spec says cannot hold one. ``\\Z`` is the
    ECMA ``$``.
    """
    out: list[str] = []
    in_class = escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            out.append(r"\Z")
            continue
        out.append(char)
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_anchors(pattern))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError("does not match the pattern")


_RequestValidator = extend(Draft4RequestValidator, {"pattern": _pattern})
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    # JSON may spell half of a UTF-16 pair ("\\ud800"); Python keeps it as a lone
    # surrogate that no UTF-8 encoder (the database's included) accepts.
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


class BodyValidator(JSONRequestBodyValidator):
    def _validate(self, body: Any) -> dict[str, Any] | None:
        if body is None:
            if self._required:
                raise BadRequestProblem(detail="The request body is required")
            return None
        if _has_lone_surrogate(body):
            raise BadRequestProblem(
                detail="The request body holds an unpaired UTF-16 surrogate, which is not text"
            )
        validator = _RequestValidator(self._schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        error = best_match(validator.iter_errors(body))
        if error is None:
            return None
        path = field_path(error)
        if error.validator in {"required", "additionalProperties"} or not path:
            where = f" in '{path}'" if path else ""
            raise BadRequestProblem(detail=f"{describe(error)}{where}")
        raise BadRequestProblem(detail=f"'{path}' {describe(error)}")


_MAX_CHECKERS = 4096


class ParamValidator(ParameterValidator):
    """Connexion's parameter checks, with each parameter's schema validator built once.

    The stock ``validate_parameter`` deep-copies the parameter and builds a new
    ``Draft4Validator`` for every parameter of every request (six per ``listMessages``);
    the schemas never change, so each is built once per parameter of the spec and reused
    (a dict entry per parameter object: as many as the spec has, whatever the traffic;
    emptied when apps built again and again, as in tests, fill it). The rules
    and the verdicts are the stock ones (Draft 4 with its format checker), and a failure
    is described by field name and rule only, never by the rejected value.
    """

    # id(param) -> (param, its validator). Connexion makes a validator object per request,
    # so the cache is the class's; the params are the spec's, alive as long as the app.
    _checkers: ClassVar[dict[int, tuple[dict[str, Any], Any]]] = {}

    @classmethod
    def _checker(cls, param: dict[str, Any]) -> Any:
        entry = cls._checkers.get(id(param))
        if entry is None or entry[0] is not param:
            schema = copy.deepcopy(param)
            schema = schema.get("schema", schema)
            entry = (param, _StockDraft4Validator(schema, format_checker=_draft4_format_checker))
            if len(cls._checkers) >= _MAX_CHECKERS:  # apps built again and again (tests)
                cls._checkers.clear()
            cls._checkers[id(param)] = entry
        return entry[1]

    def validate_parameter(
        self,
        parameter_type: str,
        value: Any,
        param: dict[str, Any],
        param_name: str | None = None,
    ) -> str | None:
        if is_nullable(param) and is_null(value):
            return None
        if value is None:
            if param.get("required"):
                return f"Missing {parameter_type} parameter '{param['name']}'"
            return None
        if self._checker(param).is_valid(value):
            return None
        schema = param.get("schema", param)
        error = best_match(Draft4Validator(schema).iter_errors(value))
        reason = describe(error) if error is not None else "is invalid"
        return f"{parameter_type.capitalize()} parameter '{param['name']}' {reason}"


def validator_map() -> dict[str, Any]:
    body = MediaTypeDict(dict(VALIDATOR_MAP["body"]))
    body["*/*json"] = BodyValidator
    return {**VALIDATOR_MAP, "parameter": ParamValidator, "body": body}
