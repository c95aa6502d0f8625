"""REST routes of multi-zone: ``POST /tokens/zone`` (Kuma's path; the token as ``text/plain``),
``POST /tokens/zone/_revoke`` and ``GET /zones+insights`` (each zone online or offline)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from isthmus.auth.tokens import InvalidToken, unverified_claims
from isthmus.auth.zone_tokens import DEFAULT_ZONE_VALIDITY, ZONE_SCOPES, issue_zone_token, revoke_zone_token
from isthmus.cp.api.errors import ApiError
from isthmus.cp.api.resources import read_body
from isthmus.cp.api.tokens import error_responses, parse_valid_for
from isthmus.cp.state import ControlPlaneState
from isthmus.kds.insights import zone_overviews
from isthmus.resources.errors import FieldError, ResourceValidationError
from isthmus.resources.zone import zone_name_problem

INVALID = "Invalid request"
ZONE_TOKEN_REQUEST = {
    "type": "object",
    "required": ["zone"],
    "properties": {
        "zone": {"type": "string", "description": "the zone's name (its control plane's --zone)"},
        "scope": {"type": "array", "items": {"type": "string", "enum": list(ZONE_SCOPES)}},
        "validFor": {"type": "string", "description": "a duration such as 720h; default: 10 years"},
    },
}
REVOKE_REQUEST = {
    "type": "object",
    "description": "the token itself, or its id (jti)",
    "properties": {"token": {"type": "string"}, "id": {"type": "string"}},
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ResourceValidationError([FieldError("", "the body must be a JSON object")], title=INVALID)
    return body


def build_router(state: ControlPlaneState) -> APIRouter:
    router = APIRouter(tags=["multizone"])
    tokens = state.auth.tokens

    def global_only(what: str) -> None:
        if state.mode == "zone":
            raise ApiError(
                400, "Bad request", f"{what}: ask the global control plane; this is a zone control plane"
            )

    @router.post(
        "/tokens/zone",
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "the token (a JWT)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(400, 401, 403),
        },
        openapi_extra=_body(ZONE_TOKEN_REQUEST),
    )
    async def zone_token(request: Request) -> PlainTextResponse:
        """A zone token: what a zone control plane presents to the global (``--zone-token-file``)."""
        global_only("zone tokens are issued by the global control plane")
        body = _object(await read_body(request))
        errors = [
            FieldError(k, "unknown field") for k in sorted(body) if k not in ("zone", "scope", "validFor")
        ]
        zone = body.get("zone")
        problem = zone_name_problem(zone)
        if zone is None or zone == "":
            errors.append(FieldError("zone", "is required"))
        elif problem:
            errors.append(FieldError("zone", problem))
        scopes = body.get("scope") or list(ZONE_SCOPES)
        if not isinstance(scopes, list) or not scopes or not all(s in ZONE_SCOPES for s in scopes):
            errors.append(FieldError("scope", f"must be a list of {', '.join(ZONE_SCOPES)}"))
        valid_for = parse_valid_for(body.get("validFor"), errors, DEFAULT_ZONE_VALIDITY)
        if errors:
            raise ResourceValidationError(errors, title=INVALID)
        assert isinstance(zone, str)
        token = await issue_zone_token(tokens, zone=zone, scopes=scopes, valid_for=valid_for)
        return PlainTextResponse(token)

    @router.post(
        "/tokens/zone/_revoke", responses=error_responses(400, 401, 403), openapi_extra=_body(REVOKE_REQUEST)
    )
    async def revoke(request: Request) -> dict[str, Any]:
        """Revoke a zone token: the global refuses it from the zone's next connection on."""
        global_only("zone tokens are revoked on the global control plane")
        body = _object(await read_body(request))
        errors = [FieldError(k, "unknown field") for k in sorted(body) if k not in ("token", "id")]
        token_id = body.get("id")
        token = body.get("token")
        if isinstance(token, str):
            try:
                claims = unverified_claims(token.strip())
            except InvalidToken as exc:
                raise ResourceValidationError([FieldError("token", str(exc))], title=INVALID) from None
            if "Zone" not in claims:
                errors.append(FieldError("token", "is not a zone token"))
            token_id = claims.get("jti")
        elif token is not None:
            errors.append(FieldError("token", "must be a string"))
        if not isinstance(token_id, str) or not token_id.strip() or "," in token_id or len(token_id) > 200:
            errors.append(FieldError("id" if token is None else "token", "a token id (jti) is required"))
        if errors:
            raise ResourceValidationError(errors, title=INVALID)
        assert isinstance(token_id, str)
        await revoke_zone_token(tokens, token_id.strip())
        return {"id": token_id.strip(), "revoked": True}

    @router.get("/zones+insights", responses=error_responses(401))
    async def zones_insights() -> dict[str, Any]:
        """Every zone with its insight: ``online`` while its control plane is connected to this global."""
        items = await zone_overviews(state.store, state.registry, state.instance_id)
        return {"total": len(items), "items": items, "next": None}

    return router
