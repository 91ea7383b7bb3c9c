"""The web app's routes: HTML pages (Jinja2, autoescaped) and the JSON API they use.

The API answers in the CLI's ``--json`` shapes. Images are addressed by id only, and only
ok images under a present root are served (see :meth:`Service.image`); nothing here writes
to disk but the thumbnail cache, unless the server was started with ``--allow-changes``:
then the duplicates page's actions (JSON POSTs, see :mod:`organizer.serve.changes`) record
decisions and move files to the trash and back, behind the front door's checks
(:mod:`organizer.serve.guard`).
"""

from __future__ import annotations

import functools
import inspect
import json
import mimetypes
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from organizer.choices import Decision, DuplicateKind, Sort
from organizer.errors import OptionsError, OrganizerError, QueryError
from organizer.filters import PhotoFilter, parse_filter
from organizer.finder import Results
from organizer.redact import hide_passwords, screen
from organizer.scan import display_path
from organizer.serve.changes import Changes
from organizer.serve.guard import ChangeCheck, Guard
from organizer.serve.service import NotFound, Service
from organizer.serve.uploads import Gate, read_body

HERE = Path(__file__).resolve().parent
MAX_RESULTS = 500
PAGE = 24
TIMELINE_ALL = 300  # events the timeline shows at once; beyond, one year at a time
EVENT_PHOTOS = 1000  # photos an event's page shows
MAX_CHANGE_BODY = 4096  # a change's JSON body: an id or two


def create_app(
    service: Service,
    bound: str = "127.0.0.1",
    token: str | None = None,
    port: int = 0,
    allow_changes: bool = False,
) -> Guard:
    """The ASGI app over an opened library, behind the :class:`Guard`; read-only unless
    ``allow_changes``."""
    check = ChangeCheck(allow_changes, token)
    changes = Changes(service)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["shown"] = lambda b: display_path(b if isinstance(b, bytes) else os.fsencode(b))
    env.filters["abspath"] = lambda m: display_path(os.path.join(os.fsencode(m.root), m.relpath))
    env.globals["unshown"] = service.unshown
    gate = Gate()

    def page(name: str, request: Request, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            library=service.lib.home.name,
            path=request.url.path,
            csrf=check.page_token(),
            **context,
        )
        return HTMLResponse(html)

    # -- pages -----------------------------------------------------------------------------

    def search_page(request: Request) -> HTMLResponse:
        params = request.query_params
        given = {k: params.get(k, "") for k in ("after", "before", "camera", "place", "near")}
        sort = params.get("sort", "")
        return page("search.html", request, q=params.get("q", ""), n=PAGE, f=given, sort=sort)

    def image_page(request: Request) -> HTMLResponse:
        info = service.image_page(_id(request))
        modified = datetime.fromtimestamp(info.record.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
        return page("image.html", request, info=info, record=info.record, modified=modified)

    def clusters_page(request: Request) -> HTMLResponse:
        runs = service.runs()
        run_id = _int(request.query_params.get("run"), None)
        summary = service.run(run_id) if runs else None
        return page("clusters.html", request, runs=runs, summary=summary, gallery=12)

    def cluster_page(request: Request) -> HTMLResponse:
        summary = service.run(_id(request, "run"))
        number = int(request.path_params["number"])
        found = next((c for c in summary.clusters if c.number == number), None)
        if found is None:
            raise NotFound(number)
        return page("cluster.html", request, summary=summary, cluster=found)

    def timeline_page(request: Request) -> HTMLResponse:
        found = service.events()
        years = found.calendar()
        year = _int(request.query_params.get("year"), None)
        if year is None and len(found.events) > TIMELINE_ALL and years:
            year = years[-1].year  # a long timeline: its latest year, the others a link away
        if year is not None and year not in {y.year for y in years}:
            raise NotFound(year)
        shown = [y for y in years if year is None or y.year == year]
        return page("timeline.html", request, found=found, years=years, shown=shown, year=year)

    def event_page(request: Request) -> HTMLResponse:
        event = service.event(_id(request, "number"))
        return page("event.html", request, event=event, limit=EVENT_PHOTOS)

    def duplicates_page(request: Request) -> HTMLResponse:
        params = request.query_params
        kind = params.get("kind") or None
        if kind is not None and kind not in tuple(DuplicateKind):
            raise QueryError(f"kind must be {' or '.join(DuplicateKind)}")
        number = _int(params.get("page"), 1)
        shown = service.duplicate_page(None if kind is None else DuplicateKind(kind), number)
        return page(
            "duplicates.html", request, shown=shown, changes=allow_changes, cleaned=changes.cleaned
        )

    def status_page(request: Request) -> HTMLResponse:
        return page(
            "status.html", request, status=service.lib.status(), failures=service.failures()
        )

    # -- the API ---------------------------------------------------------------------------

    def answer(results: Results) -> JSONResponse:
        """Results in the CLI's shape; one whose file is not served says why (``not_shown``),
        so the page shows that instead of a broken picture."""
        data = results.to_dict()
        for entry, result in zip(data["results"], results.results, strict=True):
            why = service.unshown(result)
            if why:
                entry["not_shown"] = why
        return JSONResponse(data)

    def api_search(request: Request) -> JSONResponse:
        text = request.query_params.get("q", "")
        limit, offset = _paging(request)
        where, sort = _filter(request)
        return answer(service.search_text(text, limit, offset, where, sort))

    async def api_search_image(request: Request) -> JSONResponse:
        # A place in the line before the body is read: a refused upload costs nothing.
        async with gate.admitted():
            data, name = await _upload(request)
            limit, offset = _paging(request)
            where, sort = _filter(request)
            async with gate.turn():
                res = await run_in_threadpool(
                    service.search_image, data, name, limit, offset, where, sort
                )
        return answer(res)

    async def _upload(request: Request) -> tuple[bytes, str]:
        body = await read_body(request)  # whatever the transfer encoding, at most MAX_UPLOAD
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):

            async def replay() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            async with Request(request.scope, replay).form(max_files=1, max_fields=4) as form:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise QueryError("send the picture in a form field named 'image'")
                data = await upload.read()
                name = upload.filename or "uploaded image"
        else:
            data, name = body, "uploaded image"
        if not data:
            raise QueryError("no image was sent")
        return data, name

    def api_similar(request: Request) -> JSONResponse:
        limit, offset = _paging(request)
        return answer(service.similar_to(_id(request), limit, offset))

    def api_clusters(request: Request) -> JSONResponse:
        summary = service.run(_int(request.query_params.get("run"), None))
        shown = _int(request.query_params.get("n"), 5)
        if not 0 <= shown <= MAX_RESULTS:
            raise QueryError(f"n must be 0..{MAX_RESULTS}")
        data = summary.to_dict(representatives=shown)
        for entry, c in zip(data["clusters"], summary.clusters, strict=True):
            entry["representative_ids"] = [m.image_id for m in c.members[:shown]]
        return JSONResponse(data)

    def api_map(request: Request) -> JSONResponse:
        return JSONResponse(service.map_points(_int(request.query_params.get("run"), None)))

    def api_events(request: Request) -> JSONResponse:
        return JSONResponse(service.events().to_dict())

    def api_duplicates(request: Request) -> JSONResponse:
        groups = service.duplicates().found.groups
        return JSONResponse({"groups": [g.to_dict() for g in groups]})  # pages: kinds in "kind"

    # -- changes (the Guard lets them in only with --allow-changes) -------------------------

    async def keeper(request: Request) -> JSONResponse:
        body = await _change_body(request)
        image_id = body.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 1:
            raise QueryError('send {"image_id": N}: the id of the image to keep')
        done = await run_in_threadpool(
            changes.choose_keeper, request.path_params["group_id"], image_id
        )
        return JSONResponse(done.to_dict())

    def decided(decision: Decision) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            await _change_body(request)
            done = await run_in_threadpool(
                changes.decide, request.path_params["group_id"], decision
            )
            return JSONResponse(done.to_dict())

        endpoint.__name__ = f"decide_{decision.name.lower()}"
        return endpoint

    async def trash(request: Request) -> JSONResponse:
        await _change_body(request)
        done = await run_in_threadpool(changes.trash, request.path_params["group_id"])
        return JSONResponse({**done.to_dict(), "undo": changes.cleaned is not None})

    async def undo(request: Request) -> JSONResponse:
        await _change_body(request)
        done = await run_in_threadpool(changes.undo)
        return JSONResponse(done.to_dict())

    def api_status(request: Request) -> JSONResponse:
        return JSONResponse(service.lib.status().to_dict())

    # -- files -----------------------------------------------------------------------------

    def thumb(request: Request) -> Response:
        path = service.thumb(_id(request), request.query_params.get("size", "s"))
        return FileResponse(
            path, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"}
        )

    def image_file(request: Request) -> Response:
        found = service.original(_id(request))
        kind = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        if not kind.startswith("image/") or kind == "image/svg+xml":
            kind = "application/octet-stream"  # never a document the browser would run
        headers = {"cache-control": "private, max-age=3600"}
        if found.path is not None:
            return FileResponse(found.path, media_type=kind, headers=headers)
        return Response(found.data, media_type=kind, headers=headers)

    routes = [
        Route("/", _safe(search_page)),
        Route("/view/{image_id:int}", _safe(image_page)),
        Route("/clusters", _safe(clusters_page)),
        Route("/clusters/{run:int}/{number:int}", _safe(cluster_page)),
        Route("/timeline", _safe(timeline_page)),
        Route("/timeline/{number:int}", _safe(event_page)),
        Route("/duplicates", _safe(duplicates_page)),
        Route("/status", _safe(status_page)),
        Route("/api/search", _safe(api_search), methods=["GET"]),
        Route("/api/search", _safe(api_search_image), methods=["POST"]),
        Route("/api/similar/{image_id:int}", _safe(api_similar)),
        Route("/api/clusters", _safe(api_clusters)),
        Route("/api/map", _safe(api_map)),
        Route("/api/events", _safe(api_events)),
        Route("/api/duplicates", _safe(api_duplicates)),
        *(
            [
                Route("/api/duplicates/{group_id}/keeper", _safe(keeper), methods=["POST"]),
                Route(
                    "/api/duplicates/{group_id}/not-duplicates",
                    _safe(decided(Decision.NOT_DUPLICATES)),
                    methods=["POST"],
                ),
                Route(
                    "/api/duplicates/{group_id}/keep-all",
                    _safe(decided(Decision.KEEP_ALL)),
                    methods=["POST"],
                ),
                Route("/api/duplicates/{group_id}/trash", _safe(trash), methods=["POST"]),
                Route("/api/clean-ups/undo", _safe(undo), methods=["POST"]),
            ]
            if allow_changes
            else []
        ),
        Route("/api/status", _safe(api_status)),
        Route("/thumb/{image_id:int}", _safe(thumb)),
        Route("/image/{image_id:int}", _safe(image_file)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            NotFound: _not_found,
            QueryError: _bad_request,
            OptionsError: _bad_request,
            OrganizerError: _failed,
            HTTPException: _http_error,
            Unexpected: _unexpected,
        },
    )
    return Guard(app, bound, token, port, check)


class Unexpected(Exception):
    """A bug met while answering: one line in the server's output and a 500, no traceback
    (ORGANIZER_DEBUG=1 prints it)."""


_KNOWN = (NotFound, OrganizerError, HTTPException)


def _safe(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """The endpoint, with any unexpected error turned into :class:`Unexpected`."""

    def report(exc: Exception) -> Unexpected:
        if os.environ.get("ORGANIZER_DEBUG"):
            traceback.print_exception(exc)
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: unexpected {type(exc).__name__}: {screen(first)}", file=sys.stderr)
        return Unexpected(f"unexpected {type(exc).__name__}")

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def guarded_async(request: Request) -> Response:
            try:
                return await endpoint(request)
            except _KNOWN:
                raise
            except Exception as exc:
                raise report(exc) from None

        return guarded_async

    @functools.wraps(endpoint)
    def guarded(request: Request) -> Response:
        try:
            return endpoint(request)
        except _KNOWN:
            raise
        except Exception as exc:
            raise report(exc) from None

    return guarded


async def _unexpected(request: Request, exc: Exception) -> Response:
    return _error(request, 500, f"{exc} (the server's output says more)")


MAX_ID = 2**63 - 1


def _id(request: Request, name: str = "image_id") -> int:
    """An id in the path: one the database could hold, else 404."""
    number = int(request.path_params[name])
    if not 1 <= number <= MAX_ID:
        raise NotFound(number)
    return number


_D = TypeVar("_D", int, None)


def _int(value: str | None, default: _D) -> int | _D:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"not a whole number: {value[:40]!r}") from None
    if abs(number) > MAX_ID:
        raise QueryError("that number is out of range")
    return number


def _paging(request: Request) -> tuple[int, int]:
    limit = _int(request.query_params.get("n"), 12)
    offset = _int(request.query_params.get("offset"), 0)
    if not 1 <= limit <= MAX_RESULTS or not 0 <= offset <= 10 * MAX_RESULTS:
        raise QueryError(f"n must be 1..{MAX_RESULTS} and offset 0..{10 * MAX_RESULTS}")
    return limit, offset


def _filter(request: Request) -> tuple[PhotoFilter, Sort]:
    """The search's filter and order, from the query string (the command line's options:
    after, before, camera, place, near; under is not offered: a page never names paths)."""
    params = request.query_params
    sort = params.get("sort") or Sort.SCORE
    if sort not in tuple(Sort):
        raise QueryError(f"sort must be {' or '.join(Sort)}")

    def values(name: str) -> list[str]:
        return [v for v in params.getlist(name) if v.strip()]

    where = parse_filter(
        params.get("after") or None,
        params.get("before") or None,
        values("camera"),
        values("place"),
        params.get("near") or None,
    )
    return where, Sort(sort)


async def _change_body(request: Request) -> dict:
    """A change request's body: a JSON object of at most :data:`MAX_CHANGE_BODY` bytes ({}
    when empty)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise QueryError("send the change as JSON (Content-Type: application/json)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CHANGE_BODY:
            raise QueryError(f"a change's body is at most {MAX_CHANGE_BODY} bytes")
    try:
        data = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        raise QueryError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise QueryError("the body must be a JSON object")
    return data


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    message = hide_passwords(message)  # a database error may quote the library's URL
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return Response(
        message + "\n", status_code=status, media_type="text/plain; charset=utf-8", headers=headers
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(request, 404, "not found")


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(request, 400, str(exc))


async def _failed(request: Request, exc: Exception) -> Response:
    return _error(request, 503, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _error(request, exc.status_code, exc.detail or "error", exc.headers)
