"""Loading untrusted YAML and JSON: bounded size, bounded nesting, no YAML aliases, plain JSON values only.

Every way a resource enters Isthmus (REST bodies, ``isthmus apply -f``, ``isthmus dp run --dataplane-file``)
goes through this module, so the same rules hold everywhere:

- at most :data:`MAX_DOCUMENT_BYTES` (1 MiB) of input;
- no YAML anchors or aliases (an alias bomb expands exponentially once the spec is serialised);
- at most :data:`MAX_DEPTH` (400) levels of nested maps and lists, checked without recursion, so a deeply
  nested document is a field error and never a ``RecursionError``;
- only plain JSON values: YAML dates stay strings (as in Kuma, which reads YAML as JSON), and non-finite
  numbers, binary data and sets are refused.

Errors are :class:`ResourceValidationError` with one :class:`FieldError` naming where the problem is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from isthmus.resources.errors import FieldError, ResourceValidationError

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "SafeYamlLoader",
    "check_plain",
    "check_size",
    "load_body",
    "load_yaml",
    "load_yaml_documents",
]

MAX_DOCUMENT_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 400
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


def _refuse(reason: str, field: str = "") -> ResourceValidationError:
    return ResourceValidationError([FieldError(field, reason)])


def _where(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class _Refused(yaml.YAMLError):
    """A document this loader will not build (alias, anchor, nesting); carries a readable message."""


class _Composer:
    """An iterative composer that refuses anchors, aliases and nesting deeper than ``max_depth``.

    Mixed in before a PyYAML loader, it replaces the loader's (recursive) composer; events still come from
    the loader's parser (libyaml's when available, which is many times faster than the Python one).
    """

    max_depth: int = MAX_DEPTH

    # what the composer uses of the rest of the loader
    check_event: Any
    get_event: Any
    resolve: Any

    def check_node(self) -> bool:
        if self.check_event(StreamStartEvent):
            self.get_event()
        return not self.check_event(StreamEndEvent)

    def get_node(self) -> Node | None:
        if self.check_event(StreamEndEvent):
            return None
        self.get_event()  # DocumentStartEvent
        node = self.compose_node(None, None)
        self.get_event()  # DocumentEndEvent
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        stack: list[tuple[Node, list[Node]]] = []  # open collections, with a pending mapping key if any
        while True:
            event = self.get_event()
            start: Any = event.start_mark
            end: Any = event.end_mark
            if isinstance(event, AliasEvent):
                raise _Refused(f"YAML aliases are not allowed (*{event.anchor}){_where(start)}")
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                raise _Refused(f"YAML anchors are not allowed (&{anchor}){_where(start)}")
            done: Node | None = None
            if isinstance(event, ScalarEvent):
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolve(ScalarNode, event.value, event.implicit)
                done = ScalarNode(tag, event.value, start, end, style=event.style)
            elif isinstance(event, CollectionStartEvent):
                if len(stack) >= self.max_depth:
                    raise _Refused(f"nested more than {self.max_depth} levels deep{_where(start)}")
                tag = event.tag
                node: Node
                if isinstance(event, SequenceStartEvent):
                    if tag is None or tag == "!":
                        tag = self.resolve(SequenceNode, None, event.implicit)
                    node = SequenceNode(tag, [], start, None, flow_style=event.flow_style)
                else:
                    assert isinstance(event, MappingStartEvent)
                    if tag is None or tag == "!":
                        tag = self.resolve(MappingNode, None, event.implicit)
                    node = MappingNode(tag, [], start, None, flow_style=event.flow_style)
                stack.append((node, []))
                continue
            elif isinstance(event, SequenceEndEvent | MappingEndEvent):
                done, _ = stack.pop()
                done.end_mark = end
            else:  # pragma: no cover - the parser emits nothing else inside a document
                raise _Refused(f"unexpected YAML event {type(event).__name__}{_where(start)}")
            if not stack:
                return done
            parent_node, pending = stack[-1]
            if isinstance(parent_node, SequenceNode):
                parent_node.value.append(done)
            elif pending:
                parent_node.value.append((pending.pop(), done))
            else:
                pending.append(done)


_BaseLoader: Any = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class SafeYamlLoader(_Composer, _BaseLoader):  # type: ignore[misc]
    """YAML 1.1's safe schema without dates (they stay strings, as in Kuma), anchors, aliases or deep nesting.

    SafeConstructor builds collections iteratively, so nothing here recurses with the depth of the input.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def check_size(size: int, what: str = "input", limit: int = MAX_DOCUMENT_BYTES) -> None:
    if size > limit:
        raise _refuse(f"{what} is {size} bytes; the limit is {limit} bytes ({limit >> 20} MiB)")


def _yaml_error(exc: yaml.YAMLError) -> ResourceValidationError:
    if isinstance(exc, _Refused):
        return _refuse(str(exc))
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    problem = " ".join(str(problem).split())
    if "maximum nesting depth" in problem:  # libyaml's own limit (1000), met before ours on long flow runs
        return _refuse(f"nested more than {MAX_DEPTH} levels deep{_where(mark)}")
    return _refuse(f"malformed YAML{_where(mark)}: {problem}")


def _documents(text: str) -> Iterator[Any]:
    loader = SafeYamlLoader(text)
    try:
        while loader.check_data():
            yield loader.get_data()
    finally:
        loader.dispose()


def load_yaml_documents(text: str, limit: int = MAX_DOCUMENT_BYTES) -> list[Any]:
    """Every non-empty document of a multi-document YAML (or JSON) text, each checked by :func:`check_plain`."""
    check_size(len(text.encode("utf-8", "surrogatepass")), limit=limit)
    try:
        docs = [d for d in _documents(text) if d is not None]
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except RecursionError:  # pragma: no cover - the composer is iterative; belt and braces
        raise _refuse(f"nested more than {MAX_DEPTH} levels deep") from None
    for i, doc in enumerate(docs):
        check_plain(doc, f"[{i}]" if len(docs) > 1 else "")
    return docs


def load_yaml(text: str, limit: int = MAX_DOCUMENT_BYTES) -> Any:
    """One YAML (or JSON) document; more than one is an error. An empty text is None."""
    docs = load_yaml_documents(text, limit)
    if len(docs) > 1:
        raise _refuse(f"expected one document, found {len(docs)}")
    return docs[0] if docs else None


def _json_constant(name: str) -> Any:
    raise _refuse(f"{name} is not a JSON number")


def load_body(raw: bytes | str, limit: int = MAX_DOCUMENT_BYTES) -> Any:
    """A request body as JSON, else as one YAML document; same limits as files (``limit``: a larger size
    for Kong's declarative files)."""
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    check_size(size, "request body", limit)
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(f"body is not UTF-8 text (byte {exc.start})") from None
    else:
        text = raw
    try:
        value = json.loads(text, parse_constant=_json_constant)
    except RecursionError:
        raise _refuse(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError:
        pass  # not JSON: YAML below
    else:
        check_plain(value)
        return value
    return load_yaml(text, limit)


_IDENT = re.compile(r"^[A-Za-z_][\w\-/.]*$")


def _path(prefix: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    text = str(key)
    if not _IDENT.match(text):
        text = json.dumps(text)[:60]
        return f"{prefix}[{text}]"
    return f"{prefix}.{text}" if prefix else text


def _short(path: str, limit: int = 120) -> str:
    return path if len(path) <= limit else path[:limit] + "..."


def check_plain(value: Any, prefix: str = "", max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` and anything that is not plain JSON, naming the field.

    Iterative (no recursion), so it is safe on any input that could be built in memory.
    """
    stack: list[tuple[Any, str, int]] = [(value, prefix, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            if isinstance(item, float) and not math.isfinite(item):
                raise _refuse(f"{item} is not a finite number", _short(path))
            if item is None or isinstance(item, str | int | float | bool):
                continue
            raise _refuse(f"a {type(item).__name__} value is not plain JSON data", _short(path))
        if depth >= max_depth:
            raise _refuse(f"nested more than {max_depth} levels deep", _short(path))
        for key, child in children:
            if isinstance(item, dict) and not isinstance(key, str):
                raise _refuse(f"map key {key!r} must be a string", _short(path))
            stack.append((child, _path(path, key), depth + 1))
