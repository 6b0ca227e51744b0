"""The one ASGI request cycle: scope, ``receive``/``send``, deadline, cancellation,
admission and the mapping of every ending to a status. Every protocol drives it.

Rules of this file:

* There is one request cycle in tether. A transport protocol (HTTP/1.1 in
  ``http1.py``; HTTP/2 streams and WebSocket sessions next) parses its wire into
  a scope and body pieces, and puts bytes back on the wire through the small
  :class:`Channel` interface below. No protocol keeps a copy of the ASGI state
  machine, the deadline and cancellation logic or the status mapping (uvicorn
  writes its cycle once per parser: that is what this file exists to avoid).
* The cycle never touches a socket and never frames a body: it validates what the
  application sends (message order, headers, Content-Length) and hands it on.
* Nothing an application does escapes as an exception: every ending goes through
  the table in ``outcomes.py`` and is logged at most once.
* A handler is cancelled for exactly two reasons (:class:`CancelReason`): its
  client left (``--cancel-on-disconnect``) or its deadline passed. Field report 1
  (docs/incidents.md): the cancellation then reaches its outbound calls and
  database queries, because they run in the handler's task.
"""

from __future__ import annotations

import asyncio
import logging
from inspect import CORO_CREATED, getcoroutinestate
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, Protocol

from tether.admission import Outcome
from tether.asgi import ASGI_VERSION, ASGIApp, Message
from tether.deadline import NO_DEADLINE, Deadline, DeadlineExceeded, set_deadline
from tether.errors import ClientDisconnected, ServiceUnavailable
from tether.server import wire
from tether.server.frameworks import ANSWERED
from tether.server.frameworks import unwrap as unwrap_framework_error
from tether.server.framing import may_have_body
from tether.server.outcomes import (
    CANCELLATIONS,
    NOTHING,
    REFUSALS,
    AlreadyReported,
    CancelReason,
    Ending,
    detail_of,
    ending_for,
)
from tether.server.request_head import RequestRejected
from tether.server.state import ServerState

if TYPE_CHECKING:
    from tether.server.forwarded import ForwardedView

error_log = logging.getLogger("tether.error")

#: the name of every request's task (what asyncio's debug output and task dumps show)
TASK_NAME: Final = "tether request"
_DISCONNECT: Final = {"type": "http.disconnect"}
# RequestCycle.trailers: none declared, declared (the body goes on), body done (next)
_TRAILERS_DECLARED: Final = 1
_TRAILERS_NEXT: Final = 2


class Channel(Protocol):
    """What a transport protocol does for the request cycles it drives.

    HTTP/1.1 implements it on its connection (``http1.HttpProtocol``); an HTTP/2
    stream or a WebSocket session implements it on the stream/session.
    """

    state: ServerState
    loop: asyncio.AbstractEventLoop
    client_label: str

    @property
    def write_paused(self) -> bool:
        """The transport's write buffer is full: ``send()`` waits on ``drain()``."""

    def send_head(self, cycle: RequestCycle, body: bytes, more: bool) -> None:
        """Write the response head (``cycle.head``) with the first body piece; the
        body's framing is chosen now, with that piece known."""

    def send_body(self, cycle: RequestCycle, body: bytes, more: bool) -> None:
        """Write a further body piece (``more`` False: the last)."""

    def send_error(self, cycle: RequestCycle, status: int, detail: str, retry_after: bool) -> None:
        """Answer a request the application did not answer, with a complete
        ``text/plain`` response after which this exchange is over."""

    def send_continue(self, cycle: RequestCycle) -> None:
        """The application asks for a body the client holds back: ``100 Continue``."""

    def cut(self, cycle: RequestCycle) -> None:
        """The head is out and the body cannot be completed: end the exchange so the
        client sees a truncated response, never a complete-looking one."""

    def reject(self, rejection: RequestRejected) -> None:
        """Answer bad input with ``rejection`` (logged once) and end the exchange."""

    def body_consumed(self, cycle: RequestCycle) -> None:
        """The application took buffered body: reading may resume."""

    async def drain(self) -> None:
        """Wait until the transport can take more bytes (or is closed)."""

    def response_complete(self, cycle: RequestCycle) -> None:
        """The last response byte of ``cycle`` has been written."""

    def send_trailers(self, cycle: RequestCycle, fields: list[tuple[bytes, bytes]],
                      more: bool) -> None:
        """Trailer fields after the body (the ``http.response.trailers`` extension);
        ``more`` False: the last ones, which end the response. The body before them
        was sent with ``more`` True, so its framing is still open."""


def build_scope(
    state: ServerState,
    http_version: str,
    method: str,
    scheme: str,
    path: str,
    raw_path: bytes,
    query_string: bytes,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    server: tuple[str, int | None] | None,
    transport_extensions: dict[str, Any] | None,
    deadline: Deadline,
) -> dict[str, Any]:
    """The ASGI ``http`` scope (ASGI 3, spec 2.4), the same for every protocol.
    (Positional arguments: keyword passing costs measurably once per request.)

    ``extensions["tether"]`` carries the request's :class:`Deadline` and whether
    a disconnect cancels the handler (a route may opt out by setting it False).
    """
    tether_ext = {"deadline": deadline, "cancel_on_disconnect": state.cancel_on_disconnect}
    if transport_extensions is None:
        extensions: dict[str, Any] = {"tether": tether_ext}
    else:
        extensions = {**transport_extensions, "tether": tether_ext}
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": http_version,
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": method,
        "root_path": state.root_path,
        "path": state.root_path + path,
        "raw_path": state.root_path_bytes + raw_path,
        "query_string": query_string,
        "headers": headers,
        "state": state.app_state.copy(),
        "extensions": extensions,
    }


class RequestCycle:
    """One request: the ASGI ``receive`` and ``send`` callables, its deadline and
    cancellation, and how it ended. Its channel puts its bytes on the wire."""

    __slots__ = (
        "body_chunks",
        "body_received",
        "buffered",
        "bytes_sent",
        "cancel_reason",
        "channel",
        "chunked",
        "client_label",
        "deadline",
        "deadline_handle",
        "disconnected",
        "expect_100",
        "expected_length",
        "failure",
        "final_delivered",
        "flush_pending",
        "head",
        "head_request",
        "head_written",
        "holds_admission",
        "http_version",
        "keep_alive",
        "logged",
        "more_body",
        "no_body",
        "response_complete",
        "scope",
        "sent_length",
        "started_at",
        "status",
        "task",
        "trailers",
        "waiter",
    )

    def __init__(
        self,
        channel: Channel,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_100: bool,
        http_version: str,
        deadline: Deadline = NO_DEADLINE,
    ) -> None:
        self.channel = channel
        #: who the client is in log lines (a trusted proxy's headers may say otherwise
        #: than the connection: set_forwarded)
        self.client_label = channel.client_label
        self.scope = scope
        #: the connection may carry another request after this one (HTTP/1.x)
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.http_version = http_version
        self.head_request = scope["method"] == "HEAD"
        # request body, fed by the channel
        self.body_chunks: list[bytes] = []
        self.buffered = 0
        self.body_received = 0
        self.more_body = True
        self.final_delivered = False
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        # response
        self.status = 0
        self.head: list[bytes] = []
        self.head_written = False
        #: the head waits for the end of the loop turn (ServerState.flush_later)
        self.flush_pending = False
        #: the application declared Transfer-Encoding: chunked, or HTTP/1.1 chose it
        self.chunked = False
        self.no_body = False
        self.expected_length: int | None = None
        self.sent_length = 0
        self.bytes_sent = 0
        self.response_complete = False
        #: the application declared trailers (ASGI ``http.response.trailers``): 1 until
        #: its body ends, then 2 until its last trailers message
        self.trailers = 0
        #: the status an unfinishable response would have had (a cut gRPC stream
        #: still reports it in its trailers: server/grpc.py)
        self.failure = 500
        self.logged = False
        self.started_at = perf_counter()  # uvloop's loop.time() ticks in milliseconds
        self.deadline = deadline
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        #: holds a slot of the admission gate (--limit-concurrency)
        self.holds_admission = False
        #: why tether cancelled the handler (None: not cancelled, or a stop)
        self.cancel_reason: CancelReason | None = None

    def set_forwarded(self, view: ForwardedView) -> None:
        """Apply what a trusted proxy's headers say (``forwarded.resolve``): the
        scope's client, scheme, server and a root_path prefix, and the client in
        this request's log lines. What the connection itself saw stays in
        ``extensions["tether"]["transport"]`` (``tether proxy`` appends that hop to
        the chains it forwards). Any protocol calls it before ``start()``."""
        scope = self.scope
        scope["extensions"]["tether"]["transport"] = {
            "client": scope["client"], "scheme": scope["scheme"], "server": scope["server"]}
        if view.client is not None and view.client_label is not None:
            scope["client"] = view.client
            self.client_label = view.client_label
        if view.scheme is not None:
            scope["scheme"] = view.scheme
        if view.server is not None:
            scope["server"] = view.server
        if view.prefix is not None and view.raw_prefix is not None:
            scope["root_path"] = view.prefix + scope["root_path"]
            scope["path"] = view.prefix + scope["path"]
            scope["raw_path"] = view.raw_prefix + scope["raw_path"]

    # -- events from the channel ----------------------------------------------------

    def start(self) -> None:
        """Run the application for this request, under its deadline."""
        channel = self.channel
        state = channel.state
        # A constant name: by default each task formats "Task-<n>", a string per request
        task = self.task = channel.loop.create_task(self.run_asgi(state.app), name=TASK_NAME)
        state.tasks.add(task)  # run_asgi removes it when it ends
        if self.deadline.at is not None:
            deadline_at = self.deadline.loop_time(channel.loop)
            if deadline_at is not None:
                self.deadline_handle = channel.loop.call_at(deadline_at, self.on_deadline)

    def feed_body(self, body: bytes) -> None:
        """A piece of the request body arrived (the channel bounds its buffering)."""
        if self.response_complete:
            return  # answered already: the rest of the body is read and dropped
        self.body_chunks.append(body)
        self.buffered += len(body)
        self.wake()

    def end_body(self) -> None:
        """The request body is complete."""
        self.more_body = False
        waiter = self.waiter  # (wake(), inline: once per request)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_disconnect(self) -> None:
        self.disconnected = True
        self._cancel_flush()
        self.wake()
        # Field report 1: a handler whose client has gone is cancelled at once (and
        # with it the calls and queries it awaits), unless the server or the route
        # opted out; a response already complete leaves background work alone.
        if not self.response_complete and self.scope["extensions"]["tether"].get(
            "cancel_on_disconnect", True
        ):
            self._cancel(CancelReason.DISCONNECT)

    def on_deadline(self) -> None:
        self.deadline_handle = None
        if not self.response_complete:
            self._cancel(CancelReason.DEADLINE)

    def abort(self, rejection: RequestRejected) -> None:
        """The request's own bytes turned out bad (body too large, malformed chunk,
        too slow) while the application runs: answer it if nothing was sent yet,
        then close. The application sees ``http.disconnect`` and its sends raise."""
        if not self.head_written and not self.response_complete:
            self._cancel_flush()
            self._response_done()
            self.status = rejection.status
            self.channel.reject(rejection)
            self.logged = True
        else:
            error_log.warning(
                "%d %s (client %s)", rejection.status, rejection.detail,
                self.client_label,
            )
            self.failure = rejection.status
            self.channel.cut(self)
        self.on_disconnect()

    def cancel_for_stop(self) -> None:
        """The worker's grace period is over: cancel the handler (tether answers 503,
        or gRPC UNAVAILABLE, whatever the application does with the cancellation)."""
        self._cancel(CancelReason.STOP)

    def _cancel(self, reason: CancelReason) -> None:
        task = self.task
        if task is not None and not task.done() and self.cancel_reason is None:
            self.cancel_reason = reason
            task.cancel()
            if getcoroutinestate(task.get_coro()) == CORO_CREATED:  # type: ignore[arg-type]
                self._never_ran(reason)

    def _never_ran(self, reason: CancelReason) -> None:
        """Cancelled before its first step (an HTTP/2 stream reset in the read that
        opened it): the coroutine will never run, nor run_asgi's bookkeeping, so it
        is done here: the ending, the log line, the task set."""
        self._end(self._cancelled_ending(reason, admitted=False))
        if not self.logged:
            self._log()
        if self.task is not None:
            self.channel.state.tasks.discard(self.task)

    def _cancelled_ending(self, reason: CancelReason | None, admitted: bool) -> Ending:
        """A cancelled handler's ending: a deadline that passed while the request still
        queued for admission is a refusal (the handler never ran), else a cancellation."""
        if reason is CancelReason.DEADLINE and not admitted \
                and self.channel.state.admission is not None:
            return REFUSALS[Outcome.EXPIRED]
        return CANCELLATIONS[reason]

    def _response_done(self) -> None:
        """The response is complete: the deadline no longer applies to this request."""
        self.response_complete = True
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
            self.deadline_handle = None

    # -- ASGI ----------------------------------------------------------------------

    async def receive(self) -> Message:
        channel = self.channel
        while not (self.disconnected or self.response_complete):
            if self.body_chunks or (not self.more_body and not self.final_delivered):
                chunks = self.body_chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                more = self.more_body
                self.final_delivered = not more
                channel.body_consumed(self)
                return {"type": "http.request", "body": body, "more_body": more}
            if self.expect_100 and self.more_body:
                # RFC 9110 section 10.1.1: send 100 only once the application asks for
                # the body, so a request refused without reading never uploads it.
                self.expect_100 = False
                if not self.head_written:
                    channel.send_continue(self)
            channel.body_consumed(self)
            self.waiter = channel.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected(f"client {self.client_label} disconnected")
        if self.cancel_reason is not None:
            # tether cancelled this handler (its deadline passed, the worker stops) and
            # the application went on: nothing it sends now reaches the client, tether
            # answers instead.
            if self.cancel_reason is CancelReason.DEADLINE:
                raise DeadlineExceeded("deadline exceeded: the handler was cancelled")
            raise ServiceUnavailable("server stopping: the handler was cancelled")
        mtype = message["type"]
        if not self.status:
            if mtype != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {mtype!r}")
            self._start_response(message)
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected ASGI message {mtype!r} after the response completed")
        if mtype != "http.response.body" or self.trailers == _TRAILERS_NEXT:
            self._send_trailers(message, mtype)
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if not more and self.trailers:
            # The body ends, the response does not: its trailers follow, so the
            # channel keeps the body's framing open.
            self.trailers = _TRAILERS_NEXT
            more = True
        channel = self.channel
        if self.head_written:
            if self.expected_length is not None:
                self._count_body(body)
            channel.send_body(self, body, more)
        else:
            self.flush_pending = False
            expected = self.expected_length
            if expected is not None and len(body) > expected and not self.no_body:
                # Nothing is on the wire yet, so this can still become a clean 500.
                raise RuntimeError(
                    f"ASGI application sent {len(body)} body bytes with Content-Length {expected}"
                )
            self.head_written = True
            channel.send_head(self, body, more)
            if self.expected_length is not None and not (self.no_body or self.chunked):
                self.sent_length += len(body)  # within the length: checked just above
        if not more:
            self._finish()
        elif channel.write_paused:
            await channel.drain()
            if self.disconnected:
                raise ClientDisconnected(f"client {self.client_label} disconnected")

    def _send_trailers(self, message: Message, mtype: str) -> None:
        """``http.response.trailers``: only after a start that declared them and the
        end of the body (ASGI spec, HTTP Trailers extension)."""
        if mtype != "http.response.trailers":
            raise RuntimeError(f"expected ASGI message 'http.response.trailers', got {mtype!r}")
        if self.trailers != _TRAILERS_NEXT:
            raise RuntimeError(
                "ASGI message 'http.response.trailers' needs 'trailers': True in "
                "'http.response.start' and must follow the last body message")
        fields: list[tuple[bytes, bytes]] = []
        for name, value in message.get("headers", ()):
            reason = wire.invalid_header(name, value)
            if reason is not None:
                raise RuntimeError(f"ASGI application sent {reason} (trailers)")
            fields.append((bytes(name).lower(), bytes(value)))
        more: bool = message.get("more_trailers", False)
        if self.expected_length is not None and not (self.no_body or self.chunked) \
                and self.sent_length != self.expected_length:
            self._finish()  # the short body is cut there, as without trailers
            return
        self.channel.send_trailers(self, fields, more)
        if not more:
            self._finish()

    def _count_body(self, body: bytes) -> None:
        """Hold the application to the Content-Length it declared (or tether chose)."""
        expected = self.expected_length
        if expected is None or self.no_body or self.chunked:
            return
        self.sent_length += len(body)
        if self.sent_length > expected:
            self._fail_mid_response(f"response body longer than its Content-Length ({expected})")
            raise AlreadyReported(
                f"ASGI application sent more than Content-Length ({expected}) bytes"
            )

    def _start_response(self, message: Message) -> None:
        status = int(message["status"])
        if not 100 <= status <= 999:
            raise RuntimeError(f"invalid HTTP status {status}")
        head = [wire.status_line(status)]
        overridden = 0  # bits of the default headers (date, server...) the app sent
        checked: wire.CheckedHead | None = message.get(wire.CHECKED_HEAD)
        if checked is None:
            headers = message.get("headers", ())
        else:  # tether proxy's head, rendered and checked already (wire.CHECKED_HEAD)
            lines, self.expected_length, overridden = checked
            head.append(lines)
            headers = ()
        render = wire.render_header
        for name, value in headers:
            try:
                kind, line, argument = render(name, value)
            except ValueError as exc:
                raise RuntimeError(f"ASGI application sent {exc}") from None
            if kind == wire.HEADER_PLAIN:
                pass
            elif kind == wire.HEADER_CONTENT_LENGTH:
                self.expected_length = argument
            elif kind == wire.HEADER_TRANSFER_ENCODING:
                self.chunked = bool(argument)
            elif kind == wire.HEADER_CONNECTION:
                if argument:
                    self.keep_alive = False
                continue  # the protocol writes its connection management itself
            else:
                overridden |= argument
            head.append(line)
        channel = self.channel
        state = channel.state
        head.append(state.default_head if not overridden else state.defaults_without(overridden))
        self.status = status
        self.head = head
        self.no_body = not may_have_body(status, self.head_request)
        if message.get("trailers", False):
            self.trailers = _TRAILERS_DECLARED
        # Defer the head by one loop turn: the body usually follows at once and goes
        # out in the same write (one syscall); a slow body still gets an early head.
        self.flush_pending = True
        state.flush_later(self, channel.loop)

    def _cancel_flush(self) -> None:
        self.flush_pending = False

    def flush(self) -> None:
        """The loop turn that started the response is over and no body came: the head
        goes out alone (a slow body still gets an early head)."""
        if not self.flush_pending:
            return
        self.flush_pending = False
        if not self.head_written and not self.disconnected and not self.response_complete:
            self.head_written = True
            self.channel.send_head(self, b"", True)

    def _finish(self) -> None:
        expected = self.expected_length
        if (
            expected is not None
            and not self.no_body
            and not self.chunked
            and self.sent_length != expected
        ):
            self._fail_mid_response(
                f"response body shorter than its Content-Length "
                f"({self.sent_length} < {expected})"
            )
            return
        self._response_done()
        self._log()
        self._completed()

    def _completed(self) -> None:
        """The last response byte is written: count it, tell the channel. Body the
        application never read is dropped now (and the rest as it arrives): holding
        it would keep reading paused and stall the connection."""
        self.body_chunks.clear()
        self.buffered = 0
        channel = self.channel
        state = channel.state
        state.total_requests += 1
        if state.on_request_done is not None:
            state.on_request_done()
        channel.response_complete(self)

    def _fail_mid_response(self, reason: str, *, quiet: bool = False,
                           status: int = 500) -> None:
        """The head is on the wire and the body cannot be completed: cut it.
        ``status``: what the response would have been answered with had nothing
        been sent (``failure``)."""
        self.failure = status
        if not quiet:
            error_log.error("%s; closing connection (client %s)", reason,
                            self.client_label)
        self._response_done()
        self.keep_alive = False
        self._log()
        self.channel.cut(self)

    # -- running the application ----------------------------------------------------

    @property
    def request_line(self) -> str:
        """``METHOD /path`` for log lines (a WebSocket scope has no method: GET)."""
        scope = self.scope
        return f"{scope.get('method', 'GET')} {scope['path']}"

    async def run_asgi(self, app: ASGIApp) -> None:
        state = self.channel.state
        gate = state.admission
        admitted = False  # admitted by the gate (it may have been let go of since)
        try:
            if self.deadline.at is not None:
                set_deadline(self.deadline)  # this task's context: the app inherits it
            if gate is not None:
                outcome = await gate.enter(self.deadline.at)
                if outcome is not Outcome.ADMITTED:
                    self._end(REFUSALS[outcome])  # the handler never runs
                    return
                admitted = self.holds_admission = True
            elif self.deadline.expired:
                self._end(REFUSALS[Outcome.EXPIRED])
                return
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            reason = self.cancel_reason
            self._end(self._cancelled_ending(reason, admitted))
            if reason is None or reason is CancelReason.STOP:
                raise  # the worker is stopping: not ours to swallow
        except Exception as raised:
            exc = unwrap_framework_error(raised)
            ending = ending_for(exc)
            if self.cancel_reason is not None:
                # The application turned tether's cancellation into an error of its own
                # (connect-python does): the ending is the cancellation's all the same.
                ending = CANCELLATIONS[self.cancel_reason]
            elif getattr(exc, ANSWERED, False):
                ending = NOTHING  # answered and counted in the app (server/frameworks.py)
            elif self.response_complete and ending.counter is not None:
                # Raised after the response was sent (a background task): the client
                # got that response, so this ending is neither answered nor counted.
                error_log.warning(
                    "%s raised after the response was sent (client %s, %s): %s",
                    type(exc).__name__, self.client_label, self.request_line, exc,
                )
                ending = NOTHING
            if ending.app_error:
                if self.disconnected and isinstance(exc, OSError):
                    ending = NOTHING  # a write to a client already gone
                else:
                    error_log.error(
                        "Exception in ASGI application (client %s, %s)",
                        self.client_label, self.request_line,
                        exc_info=exc,
                    )
            self._end(ending, exc)
        else:
            if self.cancel_reason is not None and not self.response_complete:
                # cancelled, and the application swallowed the cancellation
                self._end(CANCELLATIONS[self.cancel_reason])
            elif not self.response_complete and not self.disconnected:
                what = "completing" if self.status else "starting"
                error_log.error(
                    "ASGI application returned without %s a response (client %s, %s)",
                    what, self.client_label, self.request_line,
                )
                self._fail_unanswered(500, "Internal Server Error")
        finally:
            if self.holds_admission:
                self.leave_admission()
            if not self.logged:
                self._log()
            if self.task is not None:
                state.tasks.discard(self.task)

    def leave_admission(self) -> None:
        """Give the admission slot back (at the end of the handler, or earlier: a
        WebSocket session holds it for its handshake only)."""
        gate = self.channel.state.admission
        if self.holds_admission and gate is not None:
            self.holds_admission = False
            gate.leave()

    def _end(self, ending: Ending, exc: BaseException | None = None) -> None:
        """Carry out an ending from the table in ``outcomes.py``."""
        if ending.counter is not None:
            self.channel.state.counters[ending.counter] += 1
        if ending.status is None:
            return
        detail = ending.detail if exc is None else detail_of(ending, exc)
        if ending.aborts_started and self.head_written:
            if not (self.response_complete or self.disconnected):
                self._fail_mid_response(detail, quiet=True, status=ending.status)
            return
        self._fail_unanswered(ending.status, detail, ending.retry_after)

    def _fail_unanswered(self, status: int, detail: str, retry_after: bool = False) -> None:
        if self.response_complete or self.disconnected:
            return
        if self.head_written:
            self._fail_mid_response(f"ASGI application failed mid-response ({detail})",
                                    status=status)
            return
        self._cancel_flush()
        self.status = status
        self._response_done()
        self.keep_alive = False
        self.channel.send_error(self, status, detail, retry_after)
        self._log()
        self._completed()

    def _log(self) -> None:
        if self.logged:
            return
        self.logged = True
        state = self.channel.state
        status = self.status if self.response_complete else 499
        seconds = perf_counter() - self.started_at
        state.http.observe(status, seconds)
        if not state.access_log:
            return
        scope = self.scope
        if state.access_exclude and scope["path"] in state.access_exclude:
            return  # --access-log-exclude (health probes): counted above, not logged
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        state.log_access(self.client_label, scope.get("method", "GET"), target, status,
                         self.bytes_sent, seconds, self.deadline, self.cancel_reason)


#: what ``OPTIONS *`` is answered with: the methods the server serves, no body
_SERVER_OPTIONS_START: Final = {
    "type": "http.response.start", "status": 200,
    "headers": [(b"allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                (b"content-length", b"0")],
}
_SERVER_OPTIONS_BODY: Final = {"type": "http.response.body", "body": b""}


class ServerOptionsCycle(RequestCycle):
    """``OPTIONS *`` (RFC 9110 section 9.3.7, "a ping" of the server itself), answered
    by the server without the application, through the ordinary cycle so that
    keep-alive and pipelining hold (``tether proxy`` probes its providers with it on
    a kept-alive connection). Left out of the access log and the request metrics: an
    application's log should not fill with probes it never saw."""

    __slots__ = ()

    async def run_asgi(self, app: ASGIApp) -> None:
        try:
            await self.send(_SERVER_OPTIONS_START)
            await self.send(_SERVER_OPTIONS_BODY)
        except ClientDisconnected:
            pass  # the prober left: nothing to answer
        finally:
            self.logged = True
            if self.task is not None:
                self.channel.state.tasks.discard(self.task)

    def _log(self) -> None:
        self.logged = True  # not an application request: no access line, no metrics
