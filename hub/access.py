"""Who may do what where: permissions, roles, grants, scopes. Pure (no I/O).

A user's rights are the union of the grants of its teams; a grant is a role on a
scope, the scope being a tag selector (``hub.selector``) or ALL. Roles are ordered:
viewer < deployer < admin, each holding every permission of the one before.

Scope checks are *sound*: a selector (of a rollout, group or group action) is inside a
scope only when it implies one of the principal's scope selectors requirement by
requirement, so every device it can ever match is a device of the scope, whatever tags
devices get later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from aiohttp import web

from hub.errors import Forbidden
from hub.selector import Op, Requirement, Selector, matches, parse

ALL_SCOPE = "all"


class Permission(StrEnum):
    """What an operator principal may do."""

    TOKENS_CREATE = "tokens:create"
    DEVICES_READ = "devices:read"
    DEVICES_WRITE = "devices:write"
    TARGETS_WRITE = "targets:write"
    GROUPS_WRITE = "groups:write"
    AUDIT_READ = "audit:read"
    RELEASES_READ = "releases:read"
    RELEASES_WRITE = "releases:write"
    ROLLOUTS_WRITE = "rollouts:write"
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"


class Role(IntEnum):
    """An operator role; a higher role holds every permission of a lower one."""

    VIEWER = 1
    DEPLOYER = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> Role:
        """Return the role called ``name`` (``viewer``, ``deployer``, ``admin``)."""
        try:
            return cls[name.upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in cls)
            raise ValueError(f"unknown role {name!r}; one of {names}") from None

    @property
    def label(self) -> str:
        """Return the role's name as the API spells it."""
        return self.name.lower()


MIN_ROLE: Mapping[Permission, Role] = {
    Permission.DEVICES_READ: Role.VIEWER,
    Permission.AUDIT_READ: Role.VIEWER,
    Permission.RELEASES_READ: Role.VIEWER,
    Permission.DEVICES_WRITE: Role.DEPLOYER,
    Permission.TARGETS_WRITE: Role.DEPLOYER,
    Permission.RELEASES_WRITE: Role.DEPLOYER,
    Permission.ROLLOUTS_WRITE: Role.DEPLOYER,
    Permission.TOKENS_CREATE: Role.ADMIN,
    Permission.GROUPS_WRITE: Role.ADMIN,
    Permission.USERS_READ: Role.ADMIN,
    Permission.USERS_WRITE: Role.ADMIN,
}


def min_role(permission: Permission) -> Role:
    """Return the lowest role holding ``permission`` (admin for one not in the map)."""
    return MIN_ROLE.get(permission, Role.ADMIN)


@dataclass(frozen=True)
class Grant:
    """A role on a scope: a selector, or None for ALL devices."""

    role: Role
    scope: Selector | None = None

    @classmethod
    def of(cls, role: str, scope: str) -> Grant:
        """Return the grant ``role`` on ``scope`` (a selector's text or ``all``)."""
        return cls(Role.named(role), None if scope == ALL_SCOPE else parse(scope))

    @property
    def scope_text(self) -> str:
        """Return the scope in canonical form (``all`` or the selector)."""
        return ALL_SCOPE if self.scope is None else str(self.scope)


@dataclass(frozen=True)
class Principal:
    """An authenticated operator and the grants it holds."""

    name: str
    grants: tuple[Grant, ...] = field(default_factory=tuple)
    teams: tuple[str, ...] = ()  # the teams the grants come from (in every audit row)

    def allows(self, permission: Permission) -> bool:
        """Return whether some grant holds ``permission`` (in any scope)."""
        need = min_role(permission)
        return any(g.role >= need for g in self.grants)

    def scope_for(self, permission: Permission) -> list[Selector] | None:
        """Return None (ALL) or the scope selectors where ``permission`` is held."""
        need = min_role(permission)
        held = [g for g in self.grants if g.role >= need]
        if any(g.scope is None for g in held):
            return None
        return [g.scope for g in held if g.scope is not None]

    def sees_all(self, permission: Permission) -> bool:
        """Return whether ``permission`` is held on ALL devices."""
        return self.allows(permission) and self.scope_for(permission) is None


ADMIN = Principal("admin", (Grant(Role.ADMIN),))


def require(principal: Principal, permission: Permission) -> None:
    """Raise Forbidden unless the principal holds the permission in some scope."""
    if not principal.allows(permission):
        need = min_role(permission).label
        raise Forbidden(f"{principal.name} lacks permission {permission.value} (role {need})")


def require_all(principal: Principal, permission: Permission) -> None:
    """Raise Forbidden unless the principal holds the permission on ALL devices."""
    require(principal, permission)
    if principal.scope_for(permission) is not None:
        raise Forbidden(
            f"{permission.value} needs a grant on scope 'all'; {principal.name} has none"
        )


def in_scope(scope: list[Selector] | None, tags: Mapping[str, str]) -> bool:
    """Return whether a device with ``tags`` is inside ``scope`` (None: ALL)."""
    return scope is None or any(matches(s, dict(tags)) for s in scope)


def implies(a: Requirement, b: Requirement) -> bool:
    """Return whether every tag set satisfying ``a`` satisfies ``b`` (same key only)."""
    if a.key != b.key:
        return False
    positive = (Op.EQ, Op.IN)
    if b.op is Op.EXISTS:
        return a.op in (*positive, Op.EXISTS)
    if b.op in positive:
        return a.op in positive and set(a.values) <= set(b.values)
    if b.op in (Op.NE, Op.NOTIN):
        if a.op in positive:
            return not set(a.values) & set(b.values)
        return a.op is Op.ABSENT or (a.op in (Op.NE, Op.NOTIN) and set(a.values) >= set(b.values))
    return a.op is Op.ABSENT  # b is ABSENT


def selector_within(selector: Selector, scope_selector: Selector) -> bool:
    """Return whether matching ``selector`` implies matching ``scope_selector``."""
    return all(
        any(implies(a, b) for a in selector.requirements) for b in scope_selector.requirements
    )


def check_selector(principal: Principal, permission: Permission, selector: Selector) -> None:
    """Raise Forbidden unless ``selector`` stays inside the principal's scope."""
    require(principal, permission)
    scope = principal.scope_for(permission)
    if scope is None or any(selector_within(selector, s) for s in scope):
        return
    scopes = " or ".join(repr(str(s)) for s in scope)
    raise Forbidden(
        f"selector {str(selector)!r} can reach devices outside {principal.name}'s scope "
        f"{scopes} for {permission.value}: add the scope's requirements "
        f"(e.g. {str(scope[0])!r}) to the selector"
    )


# The request key hub.route_access sets to the authenticated caller.
PRINCIPAL_KEY = web.RequestKey("principal", Principal)
