"""Schema of ``MeshTLS``: TLS versions and ciphers of mesh mTLS, and Strict | Permissive per workload."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, model_validator

from isthmus.policies.sections import From, Rule, conf_problem, mesh_ref, target_ref_problems
from isthmus.resources.common import Model, TargetRef


class TlsVersion(str, Enum):
    AUTO = "TLSAuto"
    TLS10 = "TLS10"
    TLS11 = "TLS11"
    TLS12 = "TLS12"
    TLS13 = "TLS13"


ENVOY_VERSION = {
    TlsVersion.AUTO: "TLS_AUTO",
    TlsVersion.TLS10: "TLSv1_0",
    TlsVersion.TLS11: "TLSv1_1",
    TlsVersion.TLS12: "TLSv1_2",
    TlsVersion.TLS13: "TLSv1_3",
}
RANK = {TlsVersion.TLS10: 0, TlsVersion.TLS11: 1, TlsVersion.TLS12: 2, TlsVersion.TLS13: 3}


class Cipher(str, Enum):
    ECDHE_ECDSA_AES128_GCM_SHA256 = "ECDHE-ECDSA-AES128-GCM-SHA256"
    ECDHE_ECDSA_AES256_GCM_SHA384 = "ECDHE-ECDSA-AES256-GCM-SHA384"
    ECDHE_ECDSA_CHACHA20_POLY1305 = "ECDHE-ECDSA-CHACHA20-POLY1305"
    ECDHE_RSA_AES128_GCM_SHA256 = "ECDHE-RSA-AES128-GCM-SHA256"
    ECDHE_RSA_AES256_GCM_SHA384 = "ECDHE-RSA-AES256-GCM-SHA384"
    ECDHE_RSA_CHACHA20_POLY1305 = "ECDHE-RSA-CHACHA20-POLY1305"


class Mode(str, Enum):
    STRICT = "Strict"
    PERMISSIVE = "Permissive"


class Version(Model):
    min: TlsVersion | None = None
    max: TlsVersion | None = None


def _version_problem(conf: Conf) -> str | None:
    """min newer than max, in one policy (merged policies may cross them: translation keeps the newer min)."""
    v = conf.tls_version
    if v is not None and v.min in RANK and v.max in RANK and RANK[v.min] > RANK[v.max]:  # type: ignore[index]
        return f"tlsVersion.min: {v.min.value} is newer than max {v.max.value}"  # type: ignore[union-attr]
    return None


class Conf(Model):
    tls_version: Version | None = Field(default=None, alias="tlsVersion")
    tls_ciphers: list[Cipher] | None = Field(default=None, alias="tlsCiphers")
    mode: Mode | None = None


class MeshTLSSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None

    @model_validator(mode="after")
    def _refs(self) -> MeshTLSSpec:
        problem = target_ref_problems(self.target_ref, None, self.from_, rules=self.rules)
        problem = problem or conf_problem(self, _version_problem)
        if problem:
            raise ValueError(
                problem.replace(
                    "to: at least one of to, from and rules", "from: at least one of from and rules"
                )
            )
        return self
