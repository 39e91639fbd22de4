"""Dependencies shared by every router: services, the caller and role checks."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gridpatrol.api.auth import CSRF_HEADER, SESSION_COOKIE, Authenticator
from gridpatrol.api.db import Database
from gridpatrol.api.evidence import EvidenceStore
from gridpatrol.api.hub import Hub
from gridpatrol.api.policy import SitePolicy
from gridpatrol.api.problems import Problem
from gridpatrol.api.service import CandidateService, Clock
from gridpatrol.api.settings import Principal, Role, Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
T = TypeVar("T")
bearer = HTTPBearer(auto_error=False, description="a token from GRIDPATROL_API_TOKENS")


@dataclass(frozen=True)
class Services:
    settings: Settings
    candidates: CandidateService
    store: EvidenceStore
    policy: SitePolicy
    hub: Hub
    auth: Authenticator
    clock: Clock
    db: Database

    async def write(self, call: Callable[[], T]) -> T:
        """Run one short storage write (a candidate's create, patch, review or stage)."""
        return await run_blocking(call, inline=self.db.writes_inline())


async def run_blocking(call: Callable[[], T], *, inline: bool) -> T:
    """Run blocking work in place when ``inline`` (cheaper than a thread hop), else in the pool."""
    return call() if inline else await run_in_threadpool(call)


# Dependencies are coroutines although they never await: FastAPI runs a plain function
# dependency in the thread pool, and that hop costs more than the check itself.
def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return services_of(request)


Svc = Annotated[Services, Depends(get_services)]


async def principal_of(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller, from a bearer token or the console's session cookie (with CSRF on writes).

    An opened session is kept in ``request.state.console_session`` (``GET /session`` answers
    its CSRF token without looking it up again)."""
    services = services_of(request)
    if request.headers.get("authorization"):
        if credentials is None:
            raise Problem(401, "use Authorization: Bearer <token>")
        principal = services.auth.by_token(credentials.credentials)
        if principal is None:
            raise Problem(401, "unknown token")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        raise Problem(401, "authentication required: a bearer token or a session")
    opened = await services.auth.open_session(cookie)
    if opened is None:
        raise Problem(401, "the session has expired or is invalid")
    if request.method not in SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), opened.csrf.encode()):
            raise Problem(403, f"a session write needs the {CSRF_HEADER} header")
    request.state.console_session = opened
    return opened.principal


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_principal(request: Request, credentials: Credentials) -> Principal:
    return await principal_of(request, credentials)


def require(*roles: Role) -> Callable[[Request, Credentials], Awaitable[Principal]]:
    # One flat dependency per role: each level of nesting costs a resolution per request.
    async def check(request: Request, credentials: Credentials) -> Principal:
        principal = await principal_of(request, credentials)
        if not any(principal.has(role) for role in roles):
            raise Problem(
                403,
                f"this needs the role {' or '.join(roles)}; {principal.name} is {principal.role}",
            )
        return principal

    return check


AnyRole = Annotated[Principal, Depends(get_principal)]
Producer = Annotated[Principal, Depends(require("producer"))]
Reviewer = Annotated[Principal, Depends(require("reviewer"))]
Platform = Annotated[Principal, Depends(require("platform"))]
ReviewerOrPlatform = Annotated[Principal, Depends(require("reviewer", "platform"))]
