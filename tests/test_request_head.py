"""The pure parts of the server: request-head rules, HTTP/1.1 framing, the table of
endings. No sockets here; tests/test_http1_rules.py sends the same cases as raw
bytes to a real server."""

from __future__ import annotations

import asyncio

import pytest

from tether.admission import Outcome
from tether.deadline import DeadlineExceeded
from tether.errors import ClientDisconnected, Overloaded, ResponseAborted, ServiceUnavailable
from tether.server import framing, outcomes, request_head
from tether.server.framing import Framing
from tether.server.request_head import RequestRejected


def rejected(call: object, *args: object) -> int:
    with pytest.raises(RequestRejected) as info:
        call(*args)  # type: ignore[operator]
    return info.value.status


# -- request-head rules ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_http1_versions_are_spoken(version: str) -> None:
    request_head.check_version(version)


@pytest.mark.parametrize("version", ["2.0", "3.0", "0.9", "1.2"])
def test_other_versions_are_505(version: str) -> None:
    assert rejected(request_head.check_version, version) == 505


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/x?page=1#posts", "/x", b"page=1"),
        (b"/x#frag?not=query", "/x", b""),
        (b"/a%20b?q", "/a b", b"q"),
        (b"/", "/", b""),
        (b"http://example.test/p?q=1#f", "/p", b"q=1"),
        (b"http://example.test", "/", b""),
        (b"https://127.0.0.1:9/secret", "/secret", b""),
    ],
)
def test_targets_split_and_fragments_dropped(target: bytes, path: str, query: bytes) -> None:
    got_path, raw_path, got_query = request_head.split_target(target, b"GET")
    assert (got_path, got_query) == (path, query)
    assert b"#" not in raw_path and b"#" not in got_query


def test_asterisk_form_is_for_options_only() -> None:
    # OPTIONS * is the server's to answer (200), never the application's.
    with pytest.raises(request_head.ServerOptions):
        request_head.split_target(b"*", b"OPTIONS")
    assert rejected(request_head.split_target, b"*", b"GET") == 400


@pytest.mark.parametrize(
    "target",
    [
        b"*@127.0.0.1:9/secret",  # glued after a provider's address, this is userinfo
        b"http://user:pw@127.0.0.1:9/x",
        b"ftp://example.test/x",
        b"example.test:443",
        b"http:///x",
        b"x",
    ],
)
def test_other_targets_are_400(target: bytes) -> None:
    assert rejected(request_head.split_target, target, b"GET") == 400


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"v", b"v"),
        (b"v \t", b"v"),
        (b" \tv", b"v"),
        (b"\t a b \t", b"a b"),
        (b"", b""),
        (b"a  b", b"a  b"),
    ],
)
def test_field_values_lose_surrounding_whitespace(value: bytes, expected: bytes) -> None:
    assert request_head.field_value(value) == expected


def test_content_length_rules() -> None:
    assert request_head.content_length(b"12", None) == 12
    assert request_head.content_length(b"10", 10) == 10
    assert rejected(request_head.content_length, b"11", 10) == 413
    assert rejected(request_head.content_length, b"ten", None) == 400


def test_transfer_codings() -> None:
    request_head.transfer_coding(b"chunked")
    request_head.transfer_coding(b"Chunked")
    assert rejected(request_head.transfer_coding, b"gzip, chunked") == 501


def test_transfer_encoding_in_http10_is_faulty_framing() -> None:
    request_head.check_framing("1.1", True)
    request_head.check_framing("1.0", False)
    assert rejected(request_head.check_framing, "1.0", True) == 400


def test_host_count_rules() -> None:
    request_head.check_hosts("1.1", 1)
    request_head.check_hosts("1.0", 0)  # HTTP/1.0 may omit Host
    assert rejected(request_head.check_hosts, "1.1", 2) == 400
    assert rejected(request_head.check_hosts, "1.0", 2) == 400
    assert rejected(request_head.check_hosts, "1.1", 0) == 400


@pytest.mark.parametrize(
    "host", [b"example.test", b"example.test:8080", b"127.0.0.1:1", b"[::1]:80", b"[::1]", b"",
             b"xn--bcher-kva.example", b"a_b.example:"],
)
def test_valid_hosts(host: bytes) -> None:
    request_head.check_host(host)


@pytest.mark.parametrize(
    "host", [b"user@example.test", b"example.test/path", b"a b", b"example.test:80:80",
             b"[::1", b"::1", b"example.test:port", b"exa\\mple"],
)
def test_invalid_hosts_are_400(host: bytes) -> None:
    assert rejected(request_head.check_host, host) == 400


def test_deadline_from_headers_narrowed_by_the_server() -> None:
    assert request_head.request_deadline([], None).at is None
    loose = request_head.request_deadline([(b"x-request-timeout-ms", b"60000")], 1.0)
    assert (loose.remaining() or 0.0) <= 1.0 and loose.at is not None
    tight = request_head.request_deadline([(b"x-request-timeout-ms", b"100")], 10.0)
    assert (tight.remaining() or 0.0) <= 0.1 and tight.at is not None
    assert rejected(request_head.request_deadline, [(b"x-request-timeout-ms", b"soon")], None) \
        == 400


# -- HTTP/1.1 framing ------------------------------------------------------------------


def choose(status: int = 200, *, declared: bool = False, head: bool = False,
           version: str = "1.1", body: bytes = b"x", more: bool = False) -> Framing:
    return framing.choose_framing(status=status, declared=declared, head_request=head,
                                  http_version=version, first_body=body, more=more)


def test_framing_table() -> None:
    assert choose() is Framing.LENGTH  # the whole body is known
    assert choose(more=True) is Framing.CHUNKED
    assert choose(more=True, version="1.0") is Framing.CLOSE
    assert choose(declared=True, more=True) is Framing.DECLARED
    assert choose(204) is Framing.DECLARED
    assert choose(304, more=True) is Framing.DECLARED
    assert choose(101) is Framing.DECLARED
    assert choose(head=True, body=b"", more=True) is Framing.NONE
    assert choose(head=True, body=b"", more=False) is Framing.NONE
    assert choose(head=True, body=b"abc") is Framing.LENGTH


def test_keep_alive_decision() -> None:
    def keeps(**changes: object) -> bool:
        args: dict[str, object] = {"requested": True, "framing": Framing.LENGTH,
                                   "body_unsent_for_100": False, "draining": False}
        args.update(changes)
        return framing.keeps_alive(**args)  # type: ignore[arg-type]

    assert keeps()
    assert not keeps(requested=False)
    assert not keeps(framing=Framing.CLOSE)
    assert not keeps(body_unsent_for_100=True)
    assert not keeps(draining=True)


def test_chunks() -> None:
    assert framing.chunk(b"hello", True) == b"5\r\nhello\r\n"
    assert framing.chunk(b"hello", False) == b"5\r\nhello\r\n0\r\n\r\n"
    assert framing.chunk(b"", False) == b"0\r\n\r\n"
    assert framing.chunk(b"", True) == b""
    assert framing.may_have_body(200, False)
    assert not framing.may_have_body(204, False)
    assert not framing.may_have_body(200, True)


# -- endings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "counter"),
    [
        (DeadlineExceeded("late"), 504, "deadline_exceeded"),
        (Overloaded("queue"), 503, "overloaded"),
        (ServiceUnavailable("down"), 503, "unavailable"),
        (ResponseAborted("upstream"), 502, None),
        (ValueError("bug"), 500, None),
        (ClientDisconnected("gone"), None, None),
        (outcomes.AlreadyReported("said"), None, None),
    ],
)
def test_every_exception_has_one_ending(
    exc: Exception, status: int | None, counter: str | None
) -> None:
    ending = outcomes.ending_for(exc)
    assert (ending.status, ending.counter) == (status, counter)
    assert ending.retry_after == (status == 503)
    assert ending.app_error == (status == 500)


def test_cancellations_and_refusals() -> None:
    assert outcomes.CANCELLATIONS[outcomes.CancelReason.DEADLINE].status == 504
    assert outcomes.CANCELLATIONS[outcomes.CancelReason.DISCONNECT].status is None
    assert outcomes.CANCELLATIONS[None].status == 503  # the worker is stopping
    assert outcomes.REFUSALS[Outcome.EXPIRED].status == 504
    assert outcomes.REFUSALS[Outcome.SHED].retry_after
    assert outcomes.ending_for(asyncio.CancelledError()) is outcomes.NOTHING


def test_detail_carries_the_cause() -> None:
    ending = outcomes.ending_for(ServiceUnavailable("no provider for orders"))
    assert outcomes.detail_of(ending, ServiceUnavailable("no provider for orders")) == (
        "Service unavailable: no provider for orders"
    )
