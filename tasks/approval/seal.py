"""The local key that seals decisions: what only driftloop's own processes on this machine can
sign, so no Prefect API caller, UI form or deployment parameter can fake one.

The key is DRIFTLOOP_DECISION_KEY from the environment, or 32 random bytes generated once into
`.driftloop/decision.key` (mode 0600). A seal is an HMAC-SHA256 over the canonical JSON of the
sealed fields, so changing any of them (approver, channel, candidate, evidence hash) breaks it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from config.loader import Project

KEY_ENV = "DRIFTLOOP_DECISION_KEY"


def key_file(project: Project) -> Path:
    return project.state_dir / "decision.key"


def decision_key(project: Project) -> bytes:
    """The key from the environment, else the project's key file (created 0600 if missing)."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return from_env.encode()
    path = key_file(project)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes racing to create it agree on the first one's key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def seal(project: Project, fields: dict[str, Any]) -> str:
    """The hex HMAC of `fields` under the project's decision key."""
    return hmac.new(decision_key(project), _canonical(fields), hashlib.sha256).hexdigest()


def verify(project: Project, fields: dict[str, Any], signature: str) -> bool:
    """True when `signature` seals exactly `fields` (compared in constant time)."""
    if not signature:
        return False
    return hmac.compare_digest(seal(project, fields), signature)


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()
