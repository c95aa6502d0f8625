"""jwt (PRIORITY 1450): Kong's token lookup (``uri_param_names``, ``cookie_names``, ``header_names`` with
``Bearer``), the credential named by the ``key_claim_name`` claim, its ``algorithm``, the signature, then
``claims_to_verify`` and ``maximum_expiration``; Kong's 401 bodies and ``WWW-Authenticate: Bearer`` headers.

Signatures are verified by Envoy's jwt_authn (:func:`authentication`): one provider per jwt credential, its
issuer the credential's ``key``, its JWKS made from ``secret`` (HS256/384/512) or ``rsa_public_key`` (RS*, PS*,
ES256/384/512, EdDSA), ``allow_missing_or_failed`` so that jwt_authn never answers itself, time checks off (a
clock skew of 136 years: Kong checks ``exp``/``nbf`` only when ``claims_to_verify`` names them, which the Lua step
does). Refused at apply: a ``key_claim_name`` other than ``iss`` (jwt_authn chooses the provider by ``iss``).
Approximation: when both ``secret_is_base64`` values are in use in a workspace, an HS credential accepts tokens
signed with its secret as given and as base64-decoded on every route.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

# Registered in the descriptor pool for the ``@type``s below (imported for that effect only).
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2  # noqa: F401
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from isthmus.gateway.plugins import EnvoyRoute, PluginKind, auth
from isthmus.gateway.plugins.auth.consumers import b64_secret

REQUIREMENT = "kong"
_NO_TIME_CHECKS = 4294967295  # jwt_authn's clock skew (uint32 seconds): Kong checks exp/nbf itself, if asked


def _max_expiration(value: float) -> float:
    if not 0 <= value <= 31536000:
        raise ValueError("value should be between 0 and 31536000")
    return value


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri_param_names: list[str] = ["jwt"]
    cookie_names: list[str] = Field(default_factory=list)
    key_claim_name: str = "iss"
    secret_is_base64: bool = False
    claims_to_verify: list[Literal["exp", "nbf"]] | None = None
    anonymous: str | None = None
    run_on_preflight: bool = True
    maximum_expiration: Annotated[float, AfterValidator(_max_expiration)] = 0
    header_names: list[str] = ["authorization"]
    realm: str | None = None


def checks(config: Config) -> dict[str, Any]:
    if config.maximum_expiration > 0 and "exp" not in (config.claims_to_verify or []):
        return {
            "@entity": ["failed conditional validation given value of field 'config.maximum_expiration'"],
            "claims_to_verify": "expected to contain: exp",
        }
    if config.key_claim_name != "iss":
        return {"key_claim_name": "a key_claim_name other than 'iss' is not supported yet"}
    return {}


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))  # Kong's sets


def apply(config: Config, routes: list[EnvoyRoute]) -> list[EnvoyRoute]:
    conf = config.model_dump()
    for name in ("uri_param_names", "cookie_names", "header_names"):
        conf[name] = _unique(conf[name])
    conf["claims_to_verify"] = _unique(conf["claims_to_verify"] or [])
    locations = {k: conf[k] for k in ("uri_param_names", "cookie_names", "header_names")}
    locations["header_names"] = [h.lower() for h in locations["header_names"]]
    conf["header_names"] = locations["header_names"]
    routes = auth.with_metadata(routes, auth.AUTH, "jwt", conf)
    routes = auth.with_metadata(routes, auth.PRE, "jwt", locations)
    per_route = {"@type": auth.JWT_ROUTE_TYPE, "requirement_name": REQUIREMENT}
    return [
        {**r, "typed_per_filter_config": {**r.get("typed_per_filter_config", {}), auth.JWT: per_route}}
        for r in routes
    ]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def public_jwk(algorithm: str, pem: str) -> dict[str, str] | None:
    """The JWK of a PEM public key for ``algorithm`` (None when the key does not fit the algorithm)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return None
    if algorithm[:2] in ("RS", "PS") and isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"kty": "RSA", "alg": algorithm, "n": _int(numbers.n), "e": _int(numbers.e)}
    curves = {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}
    if algorithm in curves and isinstance(key, ec.EllipticCurvePublicKey):
        crv, size = curves[algorithm]
        if key.curve.key_size != {"P-256": 256, "P-384": 384, "P-521": 521}[crv]:
            return None
        point = key.public_numbers()
        x, y = (_b64url(v.to_bytes(size, "big")) for v in (point.x, point.y))
        return {"kty": "EC", "alg": algorithm, "crv": crv, "x": x, "y": y}
    if algorithm == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "alg": "EdDSA", "crv": "Ed25519", "x": _b64url(raw)}
    return None


def _keys(cred: Mapping[str, Any], modes: set[bool]) -> list[dict[str, str]]:
    algorithm = str(cred.get("algorithm") or "HS256")
    if algorithm.startswith("HS"):
        secret = str(cred.get("secret") or "")
        keys = []
        if False in modes:
            keys.append({"kty": "oct", "alg": algorithm, "k": _b64url(secret.encode())})
        decoded = b64_secret(secret) if True in modes else None
        if decoded:
            keys.append({"kty": "oct", "alg": algorithm, "k": _b64url(decoded)})
        return keys
    jwk = public_jwk(algorithm, str(cred.get("rsa_public_key") or ""))
    return [jwk] if jwk else []


def authentication(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """jwt_authn's ``JwtAuthentication``: one provider per jwt credential with keys."""
    modes = {
        bool((p.get("config") or {}).get("secret_is_base64")) for p in auth.enabled_plugins(entities, "jwt")
    }
    providers: dict[str, Any] = {}
    for cid, cred in sorted(entities.get("jwts", {}).items()):
        keys = _keys(cred, modes or {False})
        if not keys:
            continue
        providers[f"c{cid}"] = {
            "issuer": str(cred["key"]),
            "local_jwks": {"inline_string": json.dumps({"keys": keys})},
            "from_headers": [{"name": auth.JWT_HEADER}],
            "forward": True,
            "payload_in_metadata": str(cid),
            "clock_skew_seconds": _NO_TIME_CHECKS,
        }
    return {
        "@type": auth.JWT_TYPE,
        "providers": providers,
        "requirement_map": {REQUIREMENT: {"allow_missing_or_failed": {}}},
    }


KIND = PluginKind(
    name="jwt",
    priority=1450,
    config=Config,
    apply=apply,
    checks=checks,
    no_consumer=True,
    # the whole authentication step (jwt, key-auth and basic-auth) sits at the highest of their priorities
    http_filters=auth.auth_filters(),
)
