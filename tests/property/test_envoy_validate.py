"""A sample of generated configurations passes ``envoy --mode validate``.

Drawn meshes (every resource kind, see :func:`mesh_documents`) are generated as in test_generation.py; every
proxy's resources are then checked by the real Envoy binary. Proxies with MeshProxyPatch modifications are left
out: a patch is the user's own Envoy configuration, which Envoy may refuse (the proxy then NACKs and keeps its
last good configuration; see the protocol tests). Each validation costs 0.1-1 s, hence fewer examples than the generation tests.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, note

from tests.property.envoy import validate_all
from tests.property.pipeline import generate, parse_all
from tests.property.strategies import mesh_documents, profile

pytestmark = pytest.mark.slow


@profile(max_examples=60)
@given(docs=mesh_documents(max_dataplanes=3, max_policies=6))
def test_generated_configurations_pass_envoy_validate(docs: list[dict[str, Any]]) -> None:
    parsed = parse_all(docs)
    assume(parsed.mesh is not None and parsed.dataplanes)
    assert parsed.mesh is not None
    note(yaml.safe_dump_all(docs, sort_keys=False))
    outcomes = generate(parsed.mesh, parsed.dataplanes, parsed.policies)
    configs = {o.name: o.resources for o in outcomes if o.resources is not None and o.ir and not o.ir.patches}
    assume(configs)
    with TemporaryDirectory() as tmp:
        failures = validate_all(configs, Path(tmp))
    assert failures == {}, "\n\n".join(f"{name}: {out}" for name, out in failures.items())
