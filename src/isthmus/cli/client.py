"""A small synchronous client of the control plane's REST API (Kuma's paths) for the resource commands.

Every failure, whether the control plane cannot be reached or it refused the request, becomes one
:class:`CliError` whose message is a single readable line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from isthmus.resources.registry import ResourceType, Scope

DEFAULT_CP_ADDRESS = "http://127.0.0.1:5681"
AUTH_TOKEN_ENV = "ISTHMUS_AUTH_TOKEN"
AUTH_HINT = f"pass --auth-token TOKEN or set {AUTH_TOKEN_ENV} (isthmus generate user-token)"
PAGE_SIZE = 100
MAX_PAGES = 10_000  # a guard against a control plane whose ``next`` links never end


class CliError(Exception):
    """A failure to report to the user as one line on stderr (exit code 1).

    ``status`` is the HTTP status when the control plane refused the request, None for any other failure.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.message = one_line(message)
        self.status = status
        super().__init__(self.message)


def one_line(text: str) -> str:
    """Collapse all whitespace (newlines included) so that a message always fits one line."""
    return " ".join(text.split())


def normalize_address(address: str) -> str:
    """``127.0.0.1:5681`` -> ``http://127.0.0.1:5681``; a trailing slash is dropped."""
    address = address.strip()
    if not address:
        raise CliError("--cp-address: must not be empty")
    if "://" not in address:
        address = f"http://{address}"
    scheme = address.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise CliError(f"--cp-address {address!r}: the scheme must be http or https")
    return address.rstrip("/")


_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    reason = str(exc) or type(exc).__name__
    # httpx wraps the OS error: "[Errno 111] Connection refused" -> "connection refused"
    reason = _ERRNO.sub("", reason.splitlines()[-1] if reason.strip() else reason)
    reason = reason.strip() or type(exc).__name__
    return reason[0].lower() + reason[1:]


def error_message(response: httpx.Response) -> str:
    """One line out of an error response: the invalid fields if any, else the detail, else the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        params = body.get("invalid_parameters")
        if isinstance(params, list) and params:
            parts = []
            for p in params:
                if not isinstance(p, dict):
                    continue
                field, reason = str(p.get("field") or ""), str(p.get("reason") or "invalid")
                parts.append(f"{field}: {reason}" if field else reason)
            if parts:
                return one_line("; ".join(parts))
        for key in ("detail", "title", "message"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return one_line(value)
    text = one_line(response.text)
    if len(text) > 200:
        text = text[:197] + "..."
    suffix = f": {text}" if text else ""
    return f"the control plane answered HTTP {response.status_code} {response.reason_phrase}{suffix}"


def _seg(value: str) -> str:
    return quote(value, safe="")


def resource_path(rtype: ResourceType, mesh: str, name: str | None = None) -> str:
    """``/meshes/{name}`` for the global Mesh, ``/meshes/{mesh}/{plural}[/{name}]`` for the rest."""
    if rtype.scope is Scope.GLOBAL:
        base = f"/{rtype.plural}"
    else:
        base = f"/meshes/{_seg(mesh)}/{rtype.plural}"
    return base if name is None else f"{base}/{_seg(name)}"


class CpClient:
    """The REST calls the CLI needs. Use as a context manager (or call :meth:`close`)."""

    def __init__(
        self,
        address: str = DEFAULT_CP_ADDRESS,
        *,
        auth_token: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``auth_token``: a user token sent as ``Authorization: Bearer``; None or empty: no token (the
        control plane then treats a request from loopback as an admin's, unless configured otherwise)."""
        self.address = normalize_address(address)
        headers = {"Accept": "application/json"}
        token = (auth_token or "").strip()
        if token:
            if any(c.isspace() for c in token) or not token.isascii():
                raise CliError("--auth-token: a token has no spaces and only ASCII characters")
            headers["Authorization"] = f"Bearer {token}"
        self.has_token = bool(token)
        self._http = httpx.Client(
            base_url=self.address,
            timeout=timeout,
            transport=transport,
            headers=headers,
            follow_redirects=False,
        )

    def __enter__(self) -> CpClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """Send one request; a transport failure or an HTTP error status raises :class:`CliError`."""
        content = None
        headers = {}
        if body is not None:
            content = json.dumps(body, default=str).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = self._http.request(method, url, params=params, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the control plane at {self.address}: {_transport_reason(exc)}"
            ) from None
        except httpx.InvalidURL as exc:
            raise CliError(f"--cp-address {self.address!r}: {exc}") from None
        if response.is_error:
            message = error_message(response)
            if response.status_code == 401 and not self.has_token:
                message = f"{message} ({AUTH_HINT})"
            raise CliError(message, status=response.status_code)
        return response

    def post_text(self, url: str, body: Any) -> str:
        """POST a JSON body to an endpoint that answers text (a token)."""
        response = self.request("POST", url, body=body)
        return response.text.strip()

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the control plane at {self.address} answered {response.request.method} "
                f"{response.request.url.path} with a body that is not JSON"
            ) from None

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        return self._json(self.request("GET", url, params=params))

    def _object(self, url: str) -> dict[str, Any]:
        value = self.get_json(url)
        if not isinstance(value, dict):
            raise CliError(
                f"the control plane answered GET {url} with a {type(value).__name__}, not an object"
            )
        return value

    def paginate(self, url: str, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following ``next`` until it is exhausted."""
        next_url: str | None = url
        params: dict[str, Any] | None = {"offset": 0, "size": page_size or PAGE_SIZE}
        seen: set[str] = set()
        pages = 0
        while next_url:
            page = self.get_json(next_url, params)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise CliError(f"the control plane answered GET {url} with something that is not a list page")
            for item in page["items"]:
                if isinstance(item, dict):
                    yield item
            nxt = page.get("next")
            params = None  # the next link carries its own offset and size
            pages += 1
            if not isinstance(nxt, str) or not nxt or nxt in seen or pages >= MAX_PAGES:
                break
            seen.add(nxt)
            next_url = nxt

    # -- API ------------------------------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        return self._object("/")

    def list_resources(self, rtype: ResourceType, mesh: str) -> list[dict[str, Any]]:
        return list(self.paginate(resource_path(rtype, mesh)))

    def get(self, rtype: ResourceType, mesh: str, name: str) -> dict[str, Any]:
        return self._object(resource_path(rtype, mesh, name))

    def put(self, rtype: ResourceType, mesh: str, name: str, document: dict[str, Any]) -> tuple[bool, Any]:
        """Create or update; returns ``(created, stored document)``."""
        response = self.request("PUT", resource_path(rtype, mesh, name), body=document)
        stored = self._json(response) if response.content else None
        return response.status_code == 201, stored

    def delete(self, rtype: ResourceType, mesh: str, name: str) -> None:
        self.request("DELETE", resource_path(rtype, mesh, name))

    def dataplane_overviews(self, mesh: str) -> list[dict[str, Any]]:
        return list(self.paginate(f"/meshes/{_seg(mesh)}/dataplanes+insights"))

    def dataplane_overview(self, mesh: str, name: str) -> dict[str, Any]:
        return self._object(f"/meshes/{_seg(mesh)}/dataplanes+insights/{_seg(name)}")

    def dataplane_config(self, mesh: str, name: str) -> dict[str, Any]:
        return self._object(f"/meshes/{_seg(mesh)}/dataplanes/{_seg(name)}/_config")

    def explain(
        self, mesh: str, name: str, to: str, path: str, method: str, headers: list[str]
    ) -> dict[str, Any]:
        params = {"to": to, "path": path, "method": method, "header": headers}
        value = self.get_json(f"/meshes/{_seg(mesh)}/dataplanes/{_seg(name)}/_explain", params=params)
        if not isinstance(value, dict):
            raise CliError("the control plane answered _explain with something other than an object")
        return value

    def dataplane_policies(self, mesh: str, name: str) -> dict[str, Any]:
        return self._object(f"/meshes/{_seg(mesh)}/dataplanes/{_seg(name)}/_policies")

    def dataplane_rules(self, mesh: str, name: str) -> dict[str, Any]:
        return self._object(f"/meshes/{_seg(mesh)}/dataplanes/{_seg(name)}/_rules")
