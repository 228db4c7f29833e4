"""Who is calling: bearer tokens mapped to a tenant and a role.

Only the SHA-256 of a token is stored. Roles name what a caller may do; the
permission table is the one place that says which role may do what.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from sensecare.archive.db import Database
from sensecare.archive.models import ApiToken, Tenant
from sensecare.errors import AuthenticationError, PermissionDeniedError


class Role(str, enum.Enum):
    ADMIN = "admin"
    TENANT_ADMIN = "tenant-admin"
    INTEGRATOR = "integrator"
    RADIOLOGIST = "radiologist"
    OPERATOR = "operator"


class Permission(str, enum.Enum):
    STORE = "store"
    READ_PHI = "read-phi"
    READ_AUDIT = "read-audit"
    MANAGE_TOKENS = "manage-tokens"


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.TENANT_ADMIN: frozenset({Permission.READ_AUDIT, Permission.MANAGE_TOKENS}),
    Role.INTEGRATOR: frozenset({Permission.STORE, Permission.READ_PHI}),
    Role.RADIOLOGIST: frozenset({Permission.READ_PHI}),
    Role.OPERATOR: frozenset(),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    tenant_id: str
    role: Role

    def require(self, permission: Permission) -> None:
        if permission not in PERMISSIONS[self.role]:
            raise PermissionDeniedError(f"role {self.role.value} may not {permission.value}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    return "sc_" + secrets.token_urlsafe(32)


class TokenStore:
    """Token lookup with a short cache so each request does not hit the index."""

    CACHE_SECONDS = 5.0

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, role: Role | str, tenant_id: str, token: str | None = None) -> str:
        """Record a token and return it (the only time it is visible)."""
        role = Role(role)
        token = token or generate_token()
        with self.db.write() as session:
            if session.get(Tenant, tenant_id) is None:
                session.add(Tenant(id=tenant_id, name=tenant_id))
                session.flush()
            session.add(
                ApiToken(token_sha256=hash_token(token), name=name, tenant_id=tenant_id, role=role.value)
            )
        return token

    def ensure(self, name: str, role: Role, tenant_id: str, token: str) -> None:
        """Register a token given from outside (``SENSECARE_ADMIN_TOKEN``) if it is new."""
        with self.db.read() as session:
            known = session.scalar(select(ApiToken.id).where(ApiToken.token_sha256 == hash_token(token)))
        if known is None:
            self.create(name, role, tenant_id, token)

    def has_admin(self) -> bool:
        with self.db.read() as session:
            return (
                session.scalar(
                    select(ApiToken.id).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None))
                )
                is not None
            )

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationError("missing Authorization: Bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Authorization must be 'Bearer <token>'")
        digest = hash_token(token.strip())
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached and now - cached[0] < self.CACHE_SECONDS:
            principal = cached[1]
        else:
            with self.db.read() as session:
                row = session.scalar(
                    select(ApiToken).where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None))
                )
            principal = Principal(row.name, row.tenant_id, Role(row.role)) if row else None
            with self._lock:
                self._cache[digest] = (now, principal)
        if principal is None:
            raise AuthenticationError("unknown or revoked token")
        return principal
