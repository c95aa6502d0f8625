"""The ``conf`` of a ``provided`` CA backend (Kuma's ``ProvidedCertificateAuthorityConfig``).

```yaml
type: provided
conf:
  cert: {file: /etc/isthmus/ca.crt}      # or inline (base64) / inlineString (PEM text)
  key: {inlineString: "-----BEGIN PRIVATE KEY-----..."}
```

Each of ``cert`` and ``key`` is a data source with exactly one of ``file``, ``inline``, ``inlineString`` or
``secret`` (``secret`` is refused: the API has no user-facing Secret kind yet). The structure is checked
wherever a Mesh is parsed (CLI, API, store); what depends on the control plane's machine — the files exist and
are readable, the certificate is a CA of this mesh and the key is its own — is checked when the API accepts the
Mesh (validation context ``on_control_plane``), so a file that later disappears cannot stop the control plane
from loading its store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, model_validator

from isthmus.pki.ca import CertificateAuthority
from isthmus.pki.provided import DataSourceError, check_provided_ca, decode_inline, read_data_source
from isthmus.resources.common import Model
from isthmus.resources.errors import from_pydantic

__all__ = ["REDACTED", "DataSource", "ProvidedCaConf", "check_provided_conf", "load_conf_ca"]

ON_CONTROL_PLANE = "on_control_plane"  # validation-context key set by the REST API when it accepts a resource
MESH_NAME = "name"  # validation-context key: the name of the Mesh being validated
# What the REST API shows instead of an inline private key; a PUT carrying it keeps the stored key
# (``cp/api/redaction.py``), so the structure check lets it through as ``inline`` although it is not base64.
REDACTED = "[redacted]"


class DataSource(Model):
    file: str | None = Field(default=None, min_length=1, max_length=4096)
    secret: str | None = None
    inline: str | None = None
    inline_string: str | None = Field(default=None, alias="inlineString", min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        given = [k for k, v in self.source_fields().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "exactly one of file, inline, inlineString or secret must be set"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.secret is not None:
            raise ValueError(
                "secret: data source 'secret' is not supported yet; use file, inline or inlineString"
            )
        if self.inline is not None and self.inline != REDACTED:
            try:
                decode_inline(self.inline)
            except ValueError as exc:
                raise ValueError(f"inline: {exc}") from None
        if self.file is not None and "\x00" in self.file:
            raise ValueError("file: must not contain NUL characters")
        return self

    def source_fields(self) -> dict[str, str | None]:
        return {
            "file": self.file,
            "secret": self.secret,
            "inline": self.inline,
            "inlineString": self.inline_string,
        }

    @property
    def kind(self) -> str:
        return next(k for k, v in self.source_fields().items() if v is not None)

    def read(self) -> bytes:
        """The content (a file is read now); DataSourceError saying why not."""
        kind = self.kind
        value = self.source_fields()[kind]
        assert value is not None
        return read_data_source(kind, value)


class ProvidedCaConf(Model):
    cert: DataSource
    key: DataSource


def check_provided_conf(conf: Mapping[str, Any] | None, context: Any) -> ProvidedCaConf:
    """The parsed ``conf`` of a provided backend; ValueError ``conf.<path>: <reason>`` otherwise. With the
    ``on_control_plane`` validation context, also loads both sources and checks the CA (see module doc)."""
    if conf is None:
        raise ValueError("conf: is required for a provided CA: give conf.cert and conf.key")
    try:
        parsed = ProvidedCaConf.model_validate(conf)
    except ValidationError as exc:
        first = from_pydantic(exc, "conf").errors[0]
        reason = "has to be defined" if first.reason == "Field required" else first.reason
        raise ValueError(f"{first.field}: {reason}") from None
    if isinstance(context, Mapping) and context.get(ON_CONTROL_PLANE):
        load_conf_ca(parsed, str(context.get(MESH_NAME) or ""))
    return parsed


def load_conf_ca(conf: ProvidedCaConf, mesh: str) -> CertificateAuthority:
    """The CA of a provided backend, read and checked now; otherwise ValueError ``conf.cert.file: ...``
    (unreadable source), ``conf.cert: ...`` (every problem of the certificate) or ``conf.key: ...``."""
    contents: dict[str, bytes] = {}
    for part, source in (("cert", conf.cert), ("key", conf.key)):
        try:
            contents[part] = source.read()
        except DataSourceError as exc:
            raise ValueError(f"conf.{part}.{source.kind}: {exc}") from None
    problems = check_provided_ca(contents["cert"], contents["key"], mesh=mesh)
    for part in ("cert", "key"):
        reasons = [p.reason for p in problems if p.part == part]
        if reasons:
            raise ValueError(f"conf.{part}: " + "; ".join(reasons))
    return CertificateAuthority(cert_pem=contents["cert"], key_pem=contents["key"])
