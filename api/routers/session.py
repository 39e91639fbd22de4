"""Console sessions: log in with a reviewer's (or an admin's) token, then an HttpOnly cookie
plus a CSRF token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gridpatrol.api.auth import SESSION_COOKIE
from gridpatrol.api.deps import AnyRole, Svc
from gridpatrol.api.problems import Problem
from gridpatrol.api.schemas import SessionIn, SessionOut

router = APIRouter(prefix="/api/v1", tags=["session"])


@router.post("/session", response_model=SessionOut)
def login(body: SessionIn, services: Svc) -> JSONResponse:
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
        samesite="strict",
        path="/",
    )
    return response


@router.get("/session", response_model=SessionOut)
def current(request: Request, who: AnyRole, services: Svc) -> SessionOut:
    opened = services.auth.open_session(request.cookies.get(SESSION_COOKIE, ""))
    csrf = opened[1] if opened is not None and opened[0].name == who.name else ""
    return SessionOut(name=who.name, role=who.role, csrf_token=csrf)


@router.delete("/session", status_code=204)
def logout() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
