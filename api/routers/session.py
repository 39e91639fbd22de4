"""Console sessions: log in with a reviewer's (or an admin's) token, then an HttpOnly cookie
plus a CSRF token; logging out ends the session on every instance."""

from __future__ import annotations

import logging
from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from gridpatrol.api.auth import SESSION_COOKIE, ConsoleSession
from gridpatrol.api.deps import AnyRole, Services, Svc
from gridpatrol.api.problems import Problem, problem_response
from gridpatrol.api.schemas import SessionIn, SessionOut

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["session"])
UNRECORDED = (
    "the logout could not be recorded (the database is unavailable): this browser no longer "
    "holds the session, but a copy of its cookie stays valid until it expires"
)


@router.post("/session", response_model=SessionOut)
def login(body: SessionIn, request: Request, services: Svc) -> JSONResponse:
    principal = services.auth.by_token(body.token)
    if principal is None:
        raise Problem(401, "unknown token")
    if not principal.has("reviewer"):
        # Everything the console does needs the reviewer role: a session of another role
        # would only be refused, request after request (the event stream retries forever).
        raise Problem(
            403, f"the console needs the role reviewer; {principal.name} is {principal.role}"
        )
    cookie, csrf = services.auth.issue_session(principal)
    out = SessionOut(name=principal.name, role=principal.role, csrf_token=csrf)
    response = JSONResponse(out.model_dump())
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=services.auth.max_age_s,
        httponly=True,
        # Not over plain http (a demo): browsers drop a Secure cookie from an http origin.
        secure=services.auth.secure(request.url.scheme),
        samesite="strict",
        path="/",
    )
    return response


@router.get("/session", response_model=SessionOut)
async def current(request: Request, who: AnyRole) -> SessionOut:
    # Set when the session cookie, not a bearer token, authenticated the request.
    opened: ConsoleSession | None = getattr(request.state, "console_session", None)
    return SessionOut(name=who.name, role=who.role, csrf_token=opened.csrf if opened else "")


@router.delete("/session", status_code=204)
async def logout(request: Request, services: Svc) -> Response:
    # A copy of the cookie (another tab, a captured request) must not outlive the logout.
    session = services.auth.read_session(request.cookies.get(SESSION_COOKIE, ""))
    response = Response(status_code=204)
    if session is not None:
        # Whatever happens to the record, the browser forgets its cookie (below): a reviewer
        # who logged out must not stay logged in on this screen unawares. Only a copy of the
        # cookie taken earlier stays valid then, until it expires; the log says whose.
        try:
            await _revoke(services, session)
        except SQLAlchemyError as exc:
            log.error(
                "the logout of %s could not be recorded (a copy of its session cookie stays "
                "valid until it expires): %s",
                session.principal.name,
                exc,
            )
            response = problem_response(503, UNRECORDED, None, request.url.path)
        except Exception:
            log.exception("the logout of %s failed", session.principal.name)
            response = problem_response(
                500, "internal error; see the server log", None, request.url.path
            )
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        secure=services.auth.secure(request.url.scheme),
        httponly=True,
        samesite="strict",
    )
    return response


async def _revoke(services: Services, session: ConsoleSession) -> None:
    """Record the logout, a second time after an OperationalError: a connection the database
    dropped (a restart, a failover) fails once and renews the pool, and recording a session
    twice records it once."""
    try:
        await services.write(partial(services.auth.revoke, session))
    except OperationalError as exc:
        log.info("the logout of %s: %s; recording it again", session.principal.name, exc)
        await services.write(partial(services.auth.revoke, session))
