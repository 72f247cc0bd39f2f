"""Bearer-token check for /v1/* (only when the service was started with --token-file)."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless `Authorization: Bearer <token>` matches (constant-time comparison)."""
    expected = request.app.state.settings.token
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token (send Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
