"""A strict payload converter: input of the wrong shape fails as InvalidInput, naming the field.

The SDK's JSON converter is lenient where Missive must not be (``"abc"`` for a
``list[str]`` becomes three letters, ``true`` for an ``int`` becomes 1) and
raises plain ``TypeError`` / ``KeyError`` where it is strict: a workflow whose
input fails so keeps its first workflow task failing, retried forever, before
any of its code runs. This converter checks every typed JSON value against its
type hint first (dataclasses field by field, lists, dicts, unions, enums,
datetimes, and the range a dataclass field declares with
``missive.validation.bounds``), and every JSON value for what no worker can
store or act on (nesting deeper than MAX_JSON_DEPTH, a string holding U+0000 or
a lone surrogate, an integer outside 64 bits, NaN or Infinity), and raises
a non-retryable ``ApplicationError`` of type ``InvalidInput`` whose message names
the field. The SDK fails the workflow (not the task) on such an error raised
while converting its input; an activity input fails the activity for good; a
signal argument is dropped; an update is rejected. InputCheckingRunner, the
runner of every Missive worker, refuses a start with no input or several.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

import temporalio.common
import temporalio.worker
from temporalio.api.common.v1 import Payload
from temporalio.converter import CompositePayloadConverter, DefaultPayloadConverter
from temporalio.exceptions import ApplicationError

from missive.errors import InvalidInput

INVALID_INPUT = InvalidInput.__name__
"""The ApplicationError type of every refusal from this converter."""

_JSON = b"json/plain"
_NULL = b"binary/null"
_REFUSED = b"missive/refused"
"""A payload InputCheckingRunner put in place of a start's arguments, with the reason."""
_SHOWN = 64
"""Most characters of a payload's own text (an encoding name) a refusal quotes."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a payload may have: the SDK encodes values
recursively, and a deeper one would fail every workflow task that passes it on.
The gateway allows 32 levels per event, so what it accepts always fits."""
_INT64 = (-(2**63), 2**63 - 1)
"""Integers Temporal (protobuf) and PostgreSQL (bigint) hold."""


def invalid_input(message: str) -> ApplicationError:
    """The non-retryable ``InvalidInput`` ApplicationError every refusal here raises."""
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)


class StrictPayloadConverter(CompositePayloadConverter):
    """The SDK's default converters, with typed values checked before they are built."""

    def __init__(self) -> None:
        super().__init__(*DefaultPayloadConverter.default_encoding_payload_converters)

    def from_payloads(
        self, payloads: Sequence[Payload], type_hints: list[type] | None = None
    ) -> list[Any]:
        """Converts each payload, refusing one its type hint does not accept.

        Raises:
            ApplicationError: ``InvalidInput`` (non-retryable) naming the field.
        """
        hints = list(type_hints or [])
        values = []
        for index, payload in enumerate(payloads):
            hint = hints[index] if index < len(hints) else None
            if hint is temporalio.common.RawValue:
                values.append(temporalio.common.RawValue(payload))
                continue
            values.append(self._convert(payload, hint))
        return values

    def _convert(self, payload: Payload, hint: type | None) -> Any:
        encoding = payload.metadata.get("encoding", b"")
        root = _root(hint)
        converter = self.converters.get(encoding)
        if encoding == _REFUSED and "reason" in payload.metadata:
            raise invalid_input(payload.metadata["reason"][:200].decode("utf-8", "replace"))
        if converter is None:
            shown = encoding[:_SHOWN].decode("utf-8", "replace") or "none"
            raise invalid_input(f"{root}: payload encoding {shown!r} is not one this worker reads")
        if hint is not None and encoding == _JSON:
            try:
                value = json.loads(payload.data)
            except (ValueError, RecursionError):
                raise invalid_input(f"{root}: the payload is not valid JSON") from None
            check_json(value, root)
            check_value(value, hint, root)
        elif hint is not None and encoding == _NULL:
            check_value(None, hint, root)
        try:
            return converter.from_payload(payload, hint)
        except ApplicationError:
            raise
        except Exception as err:
            # A value the checks passed but the SDK still cannot build (a payload
            # of another encoding for a typed value): refused, not retried.
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise invalid_input(f"{root}: {reason}") from None


def check_json(value: Any, path: str) -> None:
    """Checks a decoded JSON value for what no worker can store or act on.

    PostgreSQL's text and jsonb cannot hold U+0000, UTF-8 cannot encode a lone
    surrogate (JSON's ``"\\ud800"``), bigint and protobuf stop at 64 bits, and a
    timer of NaN seconds is no timer: such values would fail an activity or a
    workflow task on every retry, so they are refused here, naming where they are.

    Raises:
        ApplicationError: ``InvalidInput`` naming the path (``Input.field[2].name``).
    """
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not _INT64[0] <= item <= _INT64[1]:
                raise invalid_input(
                    f"{_short(where)}: the integer is outside the signed 64-bit range"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise invalid_input(f"{_short(where)}: expected a finite number, got {item}")
        elif isinstance(item, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise invalid_input(f"{_short(where)}: nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, list):
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
                continue
            for key, v in item.items():
                _check_string(key, f"{where}: a key")
                stack.append((v, f"{where}.{key[:_SHOWN]}", depth + 1))


def _check_string(text: str, where: str) -> None:
    if "\x00" in text:
        raise invalid_input(f"{_short(where)}: holds U+0000 (NUL), which cannot be stored")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise invalid_input(
                f"{_short(where)}: is not valid Unicode: a lone surrogate at character {err.start}"
            ) from None


def _short(path: str) -> str:
    """A path as a refusal quotes it: at most _SHOWN characters (deep ones are long)."""
    return path if len(path) <= _SHOWN else f"{path[: _SHOWN - 3]}..."


def check_value(value: Any, hint: Any, path: str) -> None:
    """Checks a JSON value against a type hint.

    Raises:
        ApplicationError: ``InvalidInput`` naming ``path`` (``Input.field[2].name``).
    """
    if hint is Any or hint is object:
        return
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        _check_union(value, typing.get_args(hint), path)
        return
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise invalid_input(f"{path}: expected one of {list(typing.get_args(hint))}")
        return
    if hint is None or hint is type(None):
        if value is not None:
            raise invalid_input(f"{path}: expected null, got {_kind(value)}")
        return
    if value is None:
        raise invalid_input(f"{path}: is required (got null)")
    if origin in (list, Sequence, tuple, set, frozenset) or hint in (list, tuple):
        _check_list(value, hint, path)
        return
    if origin in (dict, Mapping) or hint is dict:
        _check_dict(value, hint, path)
        return
    if not isinstance(hint, type):
        return
    if dataclasses.is_dataclass(hint):
        _check_dataclass(value, hint, path)
    elif issubclass(hint, Enum):
        allowed = [m.value for m in hint]
        if value not in allowed or isinstance(value, bool):
            raise invalid_input(f"{path}: expected one of {', '.join(map(str, allowed))}")
    elif hint is bool:
        if not isinstance(value, bool):
            raise invalid_input(f"{path}: expected true or false, got {_kind(value)}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_input(f"{path}: expected an integer, got {_kind(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_input(f"{path}: expected a number, got {_kind(value)}")
    elif hint is str:
        if not isinstance(value, str):
            raise invalid_input(f"{path}: expected a string, got {_kind(value)}")
    elif hint is datetime:
        if not isinstance(value, str):
            raise invalid_input(f"{path}: expected an ISO-8601 time, got {_kind(value)}")
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise invalid_input(f"{path}: expected an ISO-8601 time") from None


def _check_union(value: Any, options: tuple[Any, ...], path: str) -> None:
    concrete = [o for o in options if o is not type(None)]
    if value is None and len(concrete) < len(options):
        return
    if len(concrete) == 1:
        check_value(value, concrete[0], path)
        return
    for option in concrete:
        try:
            check_value(value, option, path)
        except ApplicationError:
            continue
        return
    raise invalid_input(f"{path}: {_kind(value)} matches none of the types allowed here")


def _check_list(value: Any, hint: Any, path: str) -> None:
    if not isinstance(value, list):
        raise invalid_input(f"{path}: expected an array, got {_kind(value)}")
    args = typing.get_args(hint)
    if not args:
        return
    if typing.get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise invalid_input(f"{path}: expected {len(args)} items, got {len(value)}")
        for index, (item, item_hint) in enumerate(zip(value, args, strict=True)):
            check_value(item, item_hint, f"{path}[{index}]")
        return
    for index, item in enumerate(value):
        check_value(item, args[0], f"{path}[{index}]")


def _check_dict(value: Any, hint: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise invalid_input(f"{path}: expected an object, got {_kind(value)}")
    args = typing.get_args(hint)
    if len(args) != 2:
        return
    for key, item in value.items():
        check_value(item, args[1], f"{path}[{json.dumps(str(key)[:_SHOWN])}]")


def _check_dataclass(value: Any, cls: type, path: str) -> None:
    if not isinstance(value, dict):
        raise invalid_input(f"{path}: expected an object, got {_kind(value)}")
    # Unknown keys are ignored: a newer sender may add fields an older worker lacks.
    for spec in _fields(cls):
        where = f"{path}.{spec.name}"
        if spec.name not in value:
            if spec.required:
                raise invalid_input(f"{where}: is required")
            continue
        item = value[spec.name]
        check_value(item, spec.hint, where)
        if spec.bounds is not None and isinstance(item, (int, float)):
            low, high = spec.bounds
            if (low is not None and item < low) or (high is not None and item > high):
                raise invalid_input(
                    f"{where}: must be between {_bound(low)} and {_bound(high)}, got {item}"
                )


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    hint: Any
    required: bool
    bounds: tuple[int | float | None, int | float | None] | None


@functools.cache
def _fields(cls: type) -> tuple[_Field, ...]:
    """A dataclass's fields with resolved hints (computed once per class)."""
    hints = typing.get_type_hints(cls)
    return tuple(
        _Field(
            name=f.name,
            hint=hints.get(f.name, Any),
            required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            bounds=f.metadata.get("missive_bounds"),
        )
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
    )


def _root(hint: Any) -> str:
    """How a refusal names the whole value: its type's name (``SendMessageInput``)."""
    options = [o for o in typing.get_args(hint) if o is not type(None)]
    if len(options) == 1 and typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = options[0]
    name = getattr(hint, "__name__", None)
    return name if isinstance(name, str) and hint is not None else "input"


def _bound(value: int | float | None) -> str:
    return "any" if value is None else str(value)


def _kind(value: Any) -> str:
    """A JSON value's kind, never the value itself (it may be large or private)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class InputCheckingRunner(temporalio.worker.WorkflowRunner):
    """Runs workflows with another runner; a start with the wrong number of inputs fails.

    The converter sees each argument, not how many there are, and the SDK builds
    a ``@workflow.init`` workflow's object from them before any interceptor:
    a start without input (``temporal workflow start`` with no ``--input``)
    would fail with a TypeError, a workflow-task failure retried forever. So the
    first activation's arguments are made exactly one: none becomes ``null``
    (which the converter refuses as InvalidInput unless the input is optional),
    more than one becomes a payload the converter refuses naming the count.
    """

    def __init__(self, inner: temporalio.worker.WorkflowRunner) -> None:
        self.inner = inner
        """The runner that runs the workflows (sandboxed or not)."""

    def prepare_workflow(self, defn: Any) -> None:
        """See base class."""
        self.inner.prepare_workflow(defn)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        """See base class."""
        self.inner.set_worker_level_failure_exception_types(types)

    def create_instance(
        self, det: temporalio.worker.WorkflowInstanceDetails
    ) -> temporalio.worker.WorkflowInstance:
        """The inner runner's instance, its first activation's arguments counted."""
        takes = len(det.defn.arg_types) if det.defn.arg_types is not None else None
        return _CountedInstance(self.inner.create_instance(det), takes)


class _CountedInstance(temporalio.worker.WorkflowInstance):
    def __init__(self, inner: temporalio.worker.WorkflowInstance, takes: int | None) -> None:
        self._inner = inner
        self._takes = takes

    def activate(self, act: Any) -> Any:
        if self._takes == 1:
            for job in act.jobs:
                if job.HasField("initialize_workflow"):
                    _one_argument(job.initialize_workflow.arguments)
        return self._inner.activate(act)

    def get_serialization_context(self, command_info: Any) -> Any:
        return self._inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self._inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self._inner.get_info()

    def get_thread_id(self) -> int | None:
        return self._inner.get_thread_id()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _one_argument(arguments: Any) -> None:
    """Makes a start's arguments exactly one payload (see InputCheckingRunner)."""
    given = len(arguments)
    if given == 1:
        return
    del arguments[:]
    if given == 0:
        arguments.add().metadata["encoding"] = _NULL
        return
    refused = arguments.add()
    refused.metadata["encoding"] = _REFUSED
    refused.metadata["reason"] = f"input: expected 1 argument, got {given}".encode()
