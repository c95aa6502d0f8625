"""Token endpoints, on Kuma's paths: ``POST /tokens/dataplane`` and ``POST /tokens/user`` answer the token as
``text/plain``; revocation and signing-key rotation are Isthmus's own (Kuma does both by editing Secrets, which
are internal here). Every route under ``/tokens`` needs an admin (see :mod:`isthmus.cp.api.auth`).
"""

from __future__ import annotations

from datetime import timedelta
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse

from isthmus.auth.keys import SigningKeyError
from isthmus.auth.tokens import (
    DATAPLANE_TYPE,
    DEFAULT_DATAPLANE_VALIDITY,
    EGRESS_TYPE,
    INGRESS_TYPE,
    MAX_VALIDITY,
    InvalidToken,
    is_dataplane_token,
    unverified_claims,
)
from isthmus.cp.api.errors import ApiError
from isthmus.cp.api.resources import read_body
from isthmus.cp.state import ControlPlaneState
from isthmus.pki.issuer import parse_lifetime
from isthmus.resources.common import NAME_RE, TAG_KEY_RE, TAG_VALUE_RE
from isthmus.resources.errors import FieldError, ResourceValidationError

MAX_GROUPS = 100
INVALID = "Invalid request"
MAX_TAG_VALUES = 100

_TOKEN_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "the token (a JWT)", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error statuses a route answers with, for the OpenAPI document (the body is the API's error shape)."""
    problem = {
        "type": "object",
        "required": ["title", "status", "detail"],
        "properties": {
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "invalid_parameters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    }
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": problem}},
        }
        for status in statuses
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_VALID_FOR = {"type": "string", "description": "a duration: 30m, 24h, 720h, 1y (at most 10 years)"}
DATAPLANE_REQUEST = {
    "type": "object",
    "required": ["mesh"],
    "properties": {
        "mesh": {"type": "string"},
        "name": {"type": "string", "description": "the Dataplane's name; absent: any name (with the tags)"},
        "tags": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "tag -> values the Dataplane may have, e.g. {kuma.io/service: [web]}",
        },
        "type": {"type": "string", "enum": [DATAPLANE_TYPE, INGRESS_TYPE, EGRESS_TYPE]},
        "validFor": {**_VALID_FOR, "description": "default: 10 years, as Kuma"},
    },
}
USER_REQUEST = {
    "type": "object",
    "required": ["name", "validFor"],
    "properties": {
        "name": {"type": "string"},
        "groups": {
            "type": "array",
            "items": {"type": "string"},
            "description": "mesh-system:admin (everything) or mesh-system:readonly (reads only)",
        },
        "validFor": _VALID_FOR,
    },
}
REVOKE_REQUEST = {
    "type": "object",
    "description": "the token itself, or its id (jti) and, for a data-plane token, its mesh",
    "properties": {"token": {"type": "string"}, "id": {"type": "string"}, "mesh": {"type": "string"}},
}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ResourceValidationError([FieldError("", "the body must be a JSON object")], title=INVALID)
    return body


def _unknown(body: dict[str, Any], known: tuple[str, ...], errors: list[FieldError]) -> None:
    errors.extend(FieldError(k, "unknown field") for k in sorted(body) if k not in known)


def parse_valid_for(value: Any, errors: list[FieldError], default: timedelta | None) -> timedelta:
    if value is None or value == "":
        if default is None:
            errors.append(FieldError("validFor", "is required, e.g. 24h"))
            return timedelta(0)
        return default
    if not isinstance(value, str):
        errors.append(FieldError("validFor", "must be a duration string such as 24h"))
        return timedelta(0)
    try:
        valid_for = parse_lifetime(value)
    except (ValueError, OverflowError) as exc:
        errors.append(FieldError("validFor", str(exc)))
        return timedelta(0)
    if valid_for > MAX_VALIDITY:
        errors.append(FieldError("validFor", "must be at most 10 years (87600h)"))
    elif valid_for < timedelta(seconds=1):
        errors.append(FieldError("validFor", "must be at least 1s"))
    return valid_for


def _name(value: Any, field: str, errors: list[FieldError], *, required: bool) -> str:
    if value is None or value == "":
        if required:
            errors.append(FieldError(field, "is required"))
        return ""
    if not isinstance(value, str) or not NAME_RE.match(value):
        errors.append(FieldError(field, "must be a resource name (letters, digits, '-', '_', '.')"))
        return ""
    return value


def parse_tags(value: Any, errors: list[FieldError]) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(FieldError("tags", "must be a map of tag to a list of values"))
        return {}
    out: dict[str, list[str]] = {}
    for key, values in value.items():
        field = f"tags.{key}"
        if not isinstance(key, str) or not TAG_KEY_RE.match(key):
            errors.append(FieldError(field, "a tag key may only have letters, digits and . - _ : /"))
            continue
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or len(values) > MAX_TAG_VALUES:
            errors.append(FieldError(field, f"must be a list of 1 to {MAX_TAG_VALUES} values"))
            continue
        bad = [v for v in values if not isinstance(v, str) or not TAG_VALUE_RE.match(v)]
        if bad:
            errors.append(FieldError(field, f"value {bad[0]!r}: may only have letters, digits and . - _ :"))
            continue
        out[key] = values
    return out


def build_router(state: ControlPlaneState) -> APIRouter:
    router = APIRouter(tags=["tokens"])
    tokens = state.auth.tokens

    async def mesh_must_exist(mesh: str, field: str) -> None:
        if await state.store.get("Mesh", "", mesh) is None:
            raise ResourceValidationError([FieldError(field, f"mesh {mesh!r} does not exist")], title=INVALID)

    @router.post(
        "/tokens/dataplane",
        response_class=PlainTextResponse,
        responses={**_TOKEN_RESPONSE, **error_responses(400, 401, 403)},
        openapi_extra=_body(DATAPLANE_REQUEST),
    )
    async def dataplane_token(request: Request) -> PlainTextResponse:
        """A data-plane token for a Dataplane of ``mesh``: by ``name``, by ``tags``, or both."""
        body = _object(await read_body(request))
        errors: list[FieldError] = []
        _unknown(body, ("mesh", "name", "tags", "type", "validFor"), errors)
        mesh = _name(body.get("mesh"), "mesh", errors, required=True)
        name = _name(body.get("name"), "name", errors, required=False)
        tags = parse_tags(body.get("tags"), errors)
        kind = body.get("type") or DATAPLANE_TYPE
        if kind not in (DATAPLANE_TYPE, INGRESS_TYPE, EGRESS_TYPE):
            errors.append(
                FieldError(
                    "type",
                    f"{kind!r} is not a valid proxy type "
                    f"({DATAPLANE_TYPE!r}, {INGRESS_TYPE!r} or {EGRESS_TYPE!r})",
                )
            )
        valid_for = parse_valid_for(body.get("validFor"), errors, DEFAULT_DATAPLANE_VALIDITY)
        if errors:
            raise ResourceValidationError(errors, title=INVALID)
        await mesh_must_exist(mesh, "mesh")
        token = await tokens.issue_dataplane_token(
            mesh=mesh, name=name, tags=tags, valid_for=valid_for, type=kind
        )
        return PlainTextResponse(token)

    @router.post(
        "/tokens/user",
        response_class=PlainTextResponse,
        responses={**_TOKEN_RESPONSE, **error_responses(400, 401, 403)},
        openapi_extra=_body(USER_REQUEST),
    )
    async def user_token(request: Request) -> PlainTextResponse:
        """A user token for the REST API."""
        body = _object(await read_body(request))
        errors: list[FieldError] = []
        _unknown(body, ("name", "groups", "validFor"), errors)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 253:
            errors.append(FieldError("name", "is required: a non-empty string of at most 253 characters"))
        groups = body.get("groups") or []
        if (
            not isinstance(groups, list)
            or len(groups) > MAX_GROUPS
            or not all(isinstance(g, str) and g.strip() and len(g) <= 253 for g in groups)
        ):
            errors.append(FieldError("groups", f"must be a list of at most {MAX_GROUPS} non-empty strings"))
        valid_for = parse_valid_for(body.get("validFor"), errors, None)
        if errors:
            raise ResourceValidationError(errors, title=INVALID)
        assert isinstance(name, str)
        token = await tokens.issue_user_token(name=name, groups=groups, valid_for=valid_for)
        return PlainTextResponse(token)

    async def revocation_target(request: Request, *, dataplane: bool) -> tuple[str, str | None]:
        body = _object(await read_body(request))
        errors: list[FieldError] = []
        _unknown(body, ("token", "id", "mesh") if dataplane else ("token", "id"), errors)
        token_id, mesh = body.get("id"), body.get("mesh")
        token = body.get("token")
        if token is not None:
            if not isinstance(token, str):
                errors.append(FieldError("token", "must be a string"))
            else:
                try:
                    claims = unverified_claims(token.strip())
                except InvalidToken as exc:
                    raise ResourceValidationError([FieldError("token", str(exc))], title=INVALID) from None
                if is_dataplane_token(claims) != dataplane:
                    kind = "a data-plane" if dataplane else "a user"
                    errors.append(FieldError("token", f"is not {kind} token"))
                token_id = claims.get("jti")
                mesh = claims.get("Mesh") if dataplane else None
        if not isinstance(token_id, str) or not token_id.strip() or "," in token_id or len(token_id) > 200:
            reason = "a token id (jti) is required: 1 to 200 characters, no ','"
            errors.append(FieldError("id" if token is None else "token", reason))
        if dataplane:
            _name(mesh, "mesh", errors, required=True)
        if errors:
            raise ResourceValidationError(errors, title=INVALID)
        assert isinstance(token_id, str)
        if dataplane:
            assert isinstance(mesh, str)
            await mesh_must_exist(mesh, "mesh")
            return token_id.strip(), mesh
        return token_id.strip(), None

    @router.post(
        "/tokens/dataplane/_revoke",
        responses=error_responses(400, 401, 403),
        openapi_extra=_body(REVOKE_REQUEST),
    )
    async def revoke_dataplane_token(request: Request) -> dict[str, Any]:
        """Revoke a data-plane token: its id joins the mesh's revocation list; the token is refused from now on
        (an ADS stream it opened before is not cut)."""
        token_id, mesh = await revocation_target(request, dataplane=True)
        await tokens.revoke(token_id, mesh)
        return {"mesh": mesh, "id": token_id, "revoked": True}

    @router.post(
        "/tokens/user/_revoke",
        responses=error_responses(400, 401, 403),
        openapi_extra=_body(REVOKE_REQUEST),
    )
    async def revoke_user_token(request: Request) -> dict[str, Any]:
        """Revoke a user token."""
        token_id, _ = await revocation_target(request, dataplane=False)
        await tokens.revoke(token_id, None)
        return {"id": token_id, "revoked": True}

    async def keyset_mesh(mesh: str | None) -> str | None:
        if mesh is not None:
            if not NAME_RE.match(mesh):
                raise ResourceValidationError(
                    [FieldError("query.mesh", "must be a mesh name")], title=INVALID
                )
            await mesh_must_exist(mesh, "query.mesh")
        return mesh

    mesh_query = Query(
        None, description="the mesh whose data-plane token keys to act on; absent: the user-token keys"
    )

    @router.get("/tokens/signing-keys", responses=error_responses(400, 401, 403))
    async def signing_keys(mesh: str | None = mesh_query) -> dict[str, Any]:
        """The serials of the signing keys (never the keys); the highest one signs new tokens."""
        serials = await tokens.signing_key_serials(await keyset_mesh(mesh))
        return {"mesh": mesh, "serials": serials, "latest": serials[-1] if serials else None}

    @router.post("/tokens/signing-keys/_rotate", responses=error_responses(400, 401, 403))
    async def rotate_signing_key(mesh: str | None = mesh_query) -> dict[str, Any]:
        """Create a signing key with the next serial: new tokens are signed with it; tokens signed by the
        older keys stay valid until those keys are deleted."""
        serial = await tokens.rotate_signing_key(await keyset_mesh(mesh))
        return {"mesh": mesh, "serial": serial}

    @router.delete("/tokens/signing-keys/{serial}", responses=error_responses(400, 401, 403, 404, 409))
    async def delete_signing_key(serial: int, mesh: str | None = mesh_query) -> dict[str, Any]:
        """Delete an older signing key: every token it signed is refused from now on."""
        keys_mesh = await keyset_mesh(mesh)
        serials = await tokens.signing_key_serials(keys_mesh)
        if serial not in serials:
            raise ApiError(404, "Not found", f"there is no signing key with serial {serial}")
        try:
            await tokens.delete_signing_key(keys_mesh, serial)
        except SigningKeyError as exc:
            raise ApiError(409, "Conflict", str(exc)) from None
        return {}

    return router
