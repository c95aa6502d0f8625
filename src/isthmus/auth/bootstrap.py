"""The first admin credential of a control plane whose loopback callers are not admins
(``--api-localhost-is-admin=false``): the bootstrap admin token, written to ``DATA_DIR/admin-user-token``."""

from __future__ import annotations

import os
from pathlib import Path

from isthmus.auth.tokens import TokenService

ADMIN_TOKEN_FILE = "admin-user-token"


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600, also when the file existed)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


async def write_admin_token(tokens: TokenService, data_dir: Path) -> Path:
    """Store (or reuse) the bootstrap admin token and write it to ``data_dir/admin-user-token``."""
    path = data_dir / ADMIN_TOKEN_FILE
    write_private_file(path, await tokens.bootstrap_admin_token() + "\n")
    return path
