"""Internal ``Secret`` records: the built-in CA of each mesh. Never served by the API."""

from __future__ import annotations

from isthmus.resources.common import Model


class SecretSpec(Model):
    data: dict[str, str]
