"""The HTTP/2 server (server/http2.py) driven frame by frame against a real ``tether
serve``: streams and trailers, RST_STREAM cancellation, deadlines and gRPC status,
the known HTTP/2 attacks, flow control both ways, the two-phase GOAWAY of a stop and
a reload, and ``--http 1|2``.

The client is tests/h2client.py (hyperframe + hpack): it writes exactly the frames a
test asks for, floods included, and keeps every frame it reads. The app is
tests/apps/h2_app.py; its handlers leave marks on disk (started, cancelled, ended).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.h2client import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    INTERNAL_ERROR,
    MAX_STREAM_ID,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Answer,
    H2Client,
)
from tests.support import APPS, ServerProcess, raw_exchange, server_process, status_of, wait_for
from tether.server.worker import EXIT_FORCED_STOP

APP = "h2_app:app"
GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
#: response fields HTTP/2 forbids (RFC 9113 section 8.2.2)
FORBIDDEN_FIELDS = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                    b"upgrade"}


@contextlib.contextmanager
def h2_server(marks: Path, *args: str) -> Iterator[ServerProcess]:
    """``tether serve`` of the test app, one worker, marks written under ``marks``."""
    with server_process(APP, *args, cwd=APPS, env={"H2_MARKS": str(marks)}) as server:
        yield server


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("h2marks")


@pytest.fixture(scope="module")
def shared(marks: Path) -> Iterator[ServerProcess]:
    """One server for the tests that leave it serving (attacks included: surviving
    them is the point)."""
    with h2_server(marks, "--h2-max-header-list-size", "16384",
                   "--limit-request-body", "2000000") as server:
        yield server


def _client_port(client: H2Client) -> int:
    return int(client.sock.getsockname()[1])


def _logged_once(server: ServerProcess, client_port: int, needle: str) -> str:
    """The one log line about ``client_port`` containing ``needle`` (fails on none or
    on more than one)."""
    server.wait_for_line(f"127.0.0.1:{client_port}", timeout=10)
    lines = [line for line in server.output().splitlines()
             if f"127.0.0.1:{client_port})" in line]
    assert len(lines) == 1, lines
    assert needle in lines[0], lines
    return lines[0]


def _quiet_after(client: H2Client) -> None:
    """A PING round trip: every frame the server had ready before it is read."""
    client.send(PingFrame(0, opaque_data=b"roundtrp"))
    client.wait(lambda: any(isinstance(f, PingFrame) and "ACK" in f.flags
                            and f.opaque_data == b"roundtrp" for f in client.frames),
                10, "the PING's answer")
    client.frames = [f for f in client.frames if not (isinstance(f, PingFrame)
                                                      and "ACK" in f.flags)]


# -- 1. streams, trailers, scope ------------------------------------------------------


def test_a_get_and_a_post_on_one_connection(shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        get = client.request(b"/")
        body = b"tether" * 1000
        post = client.request(b"/echo", method=b"POST", body=body)
        got, posted = client.answer(get), client.answer(post)
    assert got.status == 200 and got.data.startswith(b"ok ")
    assert posted.status == 200
    assert json.loads(posted.data) == {"size": len(body),
                                       "sha256": hashlib.sha256(body).hexdigest()}


def test_fifty_concurrent_streams_on_one_connection_are_all_answered(
        shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        # All fifty open at once: each handler waits 0.5 s, so none ends before the
        # last HEADERS frame is in; one after the other they would take 25 s.
        started = time.monotonic()
        ids = [client.request(b"/slow?s=0.5") for _ in range(50)]
        client.wait(lambda: all(client.answers[i].done for i in ids), 30, "fifty answers")
        assert time.monotonic() - started < 10
        answers = [client.answers[i] for i in ids]
    assert [answer.status for answer in answers] == [200] * 50
    assert all(answer.data.startswith(b"slow ok ") for answer in answers)
    assert all(answer.reset is None for answer in answers)


def test_response_trailers_are_a_trailing_headers_frame_that_ends_the_stream(
        shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        answer = client.answer(client.request(b"/trailers"))
        frames = [frame for frame in client.frames if frame.stream_id == 1]
    assert answer.status == 200
    assert answer.data == b"part one, part two"
    assert answer.trailers == [(b"x-checksum", b"abc123"), (b"x-parts", b"2")]
    last = frames[-1]
    assert isinstance(last, HeadersFrame), client.describe()
    assert {"END_STREAM", "END_HEADERS"} <= last.flags
    # the body's DATA frames leave the stream open for the trailers
    assert all("END_STREAM" not in frame.flags for frame in frames[:-1])


def test_connection_specific_headers_never_reach_an_http2_client(
        shared: ServerProcess) -> None:
    """RFC 9113 8.2.2: a client must treat them as malformed (curl and grpcio do)."""
    with H2Client(shared.port) as client:
        hop = client.answer(client.request(b"/hop"))
        chunked = client.answer(client.request(b"/trailers"))  # chunked on HTTP/1.1
    for answer in (hop, chunked):
        names = {name for name, _ in answer.headers}
        assert not names & FORBIDDEN_FIELDS, answer.headers
    assert hop.header(b"x-kept") == b"yes" and hop.data == b"hop"


def test_a_head_request_gets_the_head_and_no_body(shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        answer = client.answer(client.request(b"/big?n=5000", method=b"HEAD"))
    assert answer.status == 200 and answer.data == b""
    assert answer.header(b"content-length") == b"5000"


def test_the_scope_says_http2_and_offers_the_trailers_extension(
        shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        facts = json.loads(client.answer(client.request(b"/scope")).data)
    assert facts["http_version"] == "2"
    assert "http.response.trailers" in facts["extensions"]


def test_a_bad_request_head_is_answered_on_its_stream_only(shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        bad_path = client.request(b"/a b")
        too_many = client.request(b"/", headers=[(b"x-f%d" % i, b"v") for i in range(150)])
        too_long = client.request(b"/", headers=[(b"x-long", b"v" * 9000)])
        grpc_too_long = client.request(b"/grpc", method=b"POST",
                                       headers=[*GRPC, (b"x-long", b"v" * 9000)])
        answers = [client.answer(bad_path), client.answer(too_many), client.answer(too_long)]
        grpc_answer = client.answer(grpc_too_long)
        assert client.answer(client.request(b"/")).status == 200  # the connection goes on
        assert not client.goaways
    assert [answer.status for answer in answers] == [400, 431, 431]
    assert all(answer.reset is None for answer in answers)
    # a gRPC client is answered in gRPC: 431 is RESOURCE_EXHAUSTED, trailers-only
    assert grpc_answer.status == 200 and len(grpc_answer.blocks) == 1
    assert grpc_answer.header(b"grpc-status") == b"8", grpc_answer.headers


def test_a_body_over_the_limit_is_413_on_its_stream_only(shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        stream = client.request(b"/echo", method=b"POST", body=b"z" * 3_000_000)
        answer = client.answer(stream, timeout=30)
        assert answer.status == 413
        assert client.answer(client.request(b"/")).status == 200
        assert not client.goaways


def test_expect_100_continue_is_an_informational_headers_block(shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        stream = client.request(b"/echo", method=b"POST", end=False,
                                headers=[(b"expect", b"100-continue")])
        client.wait(lambda: bool(client.answers[stream].blocks), 10, "100 Continue")
        assert client.answers[stream].blocks[0] == [(b":status", b"100")]
        client.send_body(stream, b"after the 100")
        answer = client.answer(stream)
    assert answer.status == 200 and json.loads(answer.data)["size"] == 13


def test_a_client_goaway_lets_its_streams_finish_then_the_connection_closes(
        shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        stream = client.request(b"/slow?s=0.5")
        # Frames after the GOAWAY in the same read are still the connection's: the
        # server must neither drop them nor call them a protocol error.
        client.send(GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR),
                    PingFrame(0, opaque_data=b"aftergoa"),
                    WindowUpdateFrame(0, window_increment=1000))
        answer = client.answer(stream)
        client.wait_closed(10)
    assert answer.status == 200 and answer.data.startswith(b"slow ok ")
    assert client.closed and not client.reset
    assert any(isinstance(f, PingFrame) and f.opaque_data == b"aftergoa"
               and "ACK" in f.flags for f in client.frames), client.describe()
    assert not any(f.error_code for f in client.goaways), client.describe()


# -- 2. RST_STREAM cancels one stream's handler ---------------------------------------


async def test_rst_stream_cancels_that_streams_handler_and_no_other(
        shared: ServerProcess, marks: Path) -> None:
    with H2Client(shared.port) as client:
        doomed = client.request(b"/slow?s=30&id=rst-doomed")
        kept = client.request(b"/slow?s=1&id=rst-kept")
        await wait_for(lambda: (marks / "started-rst-doomed").exists(), 10, "handler start")
        client.rst(doomed, CANCEL)
        await wait_for(lambda: (marks / "cancelled-rst-doomed").exists(), 10,
                       "the reset stream's handler to be cancelled")
        answer = client.answer(kept, timeout=15)
        assert answer.status == 200 and answer.data.startswith(b"slow ok ")
        # the connection goes on after the reset
        assert client.answer(client.request(b"/")).status == 200
    assert not (marks / "cancelled-rst-kept").exists()


def test_a_handler_failing_mid_response_resets_http_and_ends_grpc_with_internal(
        shared: ServerProcess) -> None:
    """A cut response must never look complete: RST_STREAM for HTTP, and for gRPC
    (whose message boundaries are its own) trailers with INTERNAL."""
    with H2Client(shared.port) as client:
        plain = client.answer(client.request(b"/fail"))
        grpc_call = client.answer(client.request(b"/fail?grpc=1", method=b"POST",
                                                 headers=GRPC, body=b""))
        assert client.answer(client.request(b"/")).status == 200
    assert plain.status == 200 and plain.reset == INTERNAL_ERROR and not plain.ended
    assert grpc_call.reset is None and grpc_call.trailer(b"grpc-status") == b"13", grpc_call


# -- 3. deadlines --------------------------------------------------------------------


async def test_a_grpc_timeout_that_runs_out_is_grpc_status_4_trailers_only(
        shared: ServerProcess, marks: Path) -> None:
    with H2Client(shared.port) as client:
        stream = client.request(b"/grpc?s=30&id=grpc-deadline", method=b"POST",
                                headers=[*GRPC, (b"grpc-timeout", b"200m")],
                                body=b"\x00\x00\x00\x00\x00")
        started = time.monotonic()
        answer = client.answer(stream, timeout=10)
        elapsed = time.monotonic() - started
    assert answer.status == 200
    assert answer.header(b"grpc-status") == b"4", answer.headers
    assert answer.header(b"content-type") == b"application/grpc"
    assert len(answer.blocks) == 1 and answer.data == b""  # trailers-only
    assert elapsed < 5
    await wait_for(lambda: (marks / "cancelled-grpc-deadline").exists(), 10,
                   "the handler to be cancelled")


async def test_a_grpc_deadline_after_the_first_message_is_grpc_status_4_in_trailers(
        shared: ServerProcess, marks: Path) -> None:
    with H2Client(shared.port) as client:
        stream = client.request(b"/grpc?s=30&started=1&id=grpc-deadline-started",
                                method=b"POST", headers=[*GRPC, (b"grpc-timeout", b"300m")],
                                body=b"\x00\x00\x00\x00\x00")
        answer = client.answer(stream, timeout=10)
    assert answer.status == 200 and answer.reset is None, answer
    assert answer.data == b"\x00\x00\x00\x00\x05hello"
    assert answer.trailer(b"grpc-status") == b"4", answer.blocks
    await wait_for(lambda: (marks / "cancelled-grpc-deadline-started").exists(), 10,
                   "the handler to be cancelled")


def test_grpc_timeout_and_x_request_timeout_ms_are_the_handlers_deadline(
        shared: ServerProcess) -> None:
    with H2Client(shared.port) as client:
        grpc_call = client.request(b"/scope", method=b"POST",
                                   headers=[*GRPC, (b"grpc-timeout", b"7S")], body=b"")
        plain = client.request(b"/scope", headers=[(b"x-request-timeout-ms", b"3000")])
        none = client.request(b"/scope")
        remaining = [json.loads(client.answer(stream).data)["time_remaining"]
                     for stream in (grpc_call, plain, none)]
    assert 5 < remaining[0] <= 7 and 1 < remaining[1] <= 3, remaining
    assert remaining[2] is None


async def test_x_request_timeout_ms_that_runs_out_is_504(
        shared: ServerProcess, marks: Path) -> None:
    with H2Client(shared.port) as client:
        answer = client.answer(client.request(
            b"/slow?s=30&id=http-deadline", headers=[(b"x-request-timeout-ms", b"200")]))
    assert answer.status == 504
    assert answer.header(b"grpc-status") is None
    await wait_for(lambda: (marks / "cancelled-http-deadline").exists(), 10,
                   "the handler to be cancelled")


# -- 4. attacks: each ends the attacker's connection, never another ------------------


@contextlib.contextmanager
def _bystander(server: ServerProcess) -> Iterator[H2Client]:
    """A connection opened (and served) before an attack; served again after it."""
    with H2Client(server.port) as bystander:
        assert bystander.answer(bystander.request(b"/")).status == 200
        yield bystander
        assert bystander.answer(bystander.request(b"/")).status == 200
        assert not (bystander.goaways or bystander.closed or bystander.reset)


def _attack(client: H2Client, payload: bytes) -> None:
    """Write ``payload``; the server may close the connection part of the way in."""
    with contextlib.suppress(OSError):
        client.send_raw(payload)


def _ended_with_goaway(client: H2Client, code: int) -> GoAwayFrame:
    client.wait_closed(timeout=15)
    assert client.goaways, f"closed without GOAWAY: {client.describe()}"
    goaway = client.goaways[-1]
    assert goaway.error_code == code, client.describe()
    return goaway


def _flood(client: H2Client, frames: list[bytes], per_write: int = 50) -> None:
    for start in range(0, len(frames), per_write):
        _attack(client, b"".join(frames[start:start + per_write]))
        if client.closed or client.reset:
            return


def test_a_frame_larger_than_the_max_frame_size_gets_goaway(shared: ServerProcess) -> None:
    with _bystander(shared), H2Client(shared.port) as attacker:
        stream = attacker.request(b"/echo", method=b"POST", end=False)
        _attack(attacker, DataFrame(stream, data=b"x" * 20000).serialize())  # > 16384
        _ended_with_goaway(attacker, FRAME_SIZE_ERROR)
        _logged_once(shared, _client_port(attacker), "HTTP/2 protocol error")


def _open_and_reset(client: H2Client, count: int) -> bytes:
    """``count`` streams, each opened (HEADERS + END_STREAM) and reset at once."""
    frames = []
    for _ in range(count):
        stream = client.next_stream_id
        client.next_stream_id += 2
        block = client.header_block([(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":path", b"/slow?s=5"), (b":authority", b"127.0.0.1")])
        frames.append(HeadersFrame(stream, data=block,
                                   flags=("END_HEADERS", "END_STREAM")).serialize())
        frames.append(_rst(stream))
    return b"".join(frames)


def test_rapid_reset_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    # A server of its own: the streams this leaves behind (see the test below) would
    # hold a shared server's stop for its whole grace period.
    with h2_server(tmp_path, "--graceful-timeout", "2") as server, _bystander(server), \
            H2Client(server.port) as attacker:
        attacker.wait(lambda: bool(attacker.server_settings), 10, "the server's SETTINGS")
        for _ in range(10):  # 1000 resets, far more than 200 within one second
            _attack(attacker, _open_and_reset(attacker, 100))
            if attacker.closed or attacker.reset:
                break
        _ended_with_goaway(attacker, ENHANCE_YOUR_CALM)
        line = _logged_once(server, _client_port(attacker), "RST_STREAM flood")
    assert "closing connection" in line


def test_streams_reset_before_their_handler_starts_leave_nothing_behind(
        tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "30") as server, \
            H2Client(server.port) as client:
        client.wait(lambda: bool(client.server_settings), 10, "the server's SETTINGS")
        client.send_raw(_open_and_reset(client, 50))  # within the bound: no flood
        _quiet_after(client)
        assert not client.goaways
        client.close()
        server.proc.send_signal(signal.SIGTERM)
        # Nothing is in flight: the stop ends at once, not after 30 s of grace.
        line = server.wait_for_line("stop finished", timeout=10)
    assert "0 cancelled" in line, line


def _rst(stream_id: int) -> bytes:
    return RstStreamFrame(stream_id, error_code=CANCEL).serialize()


def test_ping_flood_gets_goaway_enhance_your_calm(shared: ServerProcess) -> None:
    with _bystander(shared), H2Client(shared.port) as attacker:
        pings = [PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(300)]
        _flood(attacker, pings)
        _ended_with_goaway(attacker, ENHANCE_YOUR_CALM)
        _logged_once(shared, _client_port(attacker), "PING flood")


def test_settings_flood_gets_goaway_enhance_your_calm(shared: ServerProcess) -> None:
    with _bystander(shared), H2Client(shared.port) as attacker:
        settings = [SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 0}).serialize()
                    for _ in range(300)]
        _flood(attacker, settings)
        _ended_with_goaway(attacker, ENHANCE_YOUR_CALM)
        _logged_once(shared, _client_port(attacker), "SETTINGS flood")


def test_empty_data_flood_gets_goaway_enhance_your_calm(shared: ServerProcess) -> None:
    """Empty DATA frames that do not end their stream cost the server work and carry
    nothing (CVE-2019-9518)."""
    with _bystander(shared), H2Client(shared.port) as attacker:
        stream = attacker.request(b"/echo", method=b"POST", end=False)
        _flood(attacker, [DataFrame(stream, data=b"").serialize() for _ in range(1000)])
        _ended_with_goaway(attacker, ENHANCE_YOUR_CALM)
        _logged_once(shared, _client_port(attacker), "empty frame flood")


def test_priority_flood_gets_goaway_enhance_your_calm(shared: ServerProcess) -> None:
    with _bystander(shared), H2Client(shared.port) as attacker:
        frames = [PriorityFrame(1 + 2 * (i % 100), depends_on=0, stream_weight=16).serialize()
                  for i in range(1000)]
        _flood(attacker, frames)
        _ended_with_goaway(attacker, ENHANCE_YOUR_CALM)
        _logged_once(shared, _client_port(attacker), "empty frame flood")


def test_priority_on_the_headers_of_many_streams_is_no_flood(shared: ServerProcess) -> None:
    """A client that gives every request a priority in its HEADERS (as browsers did)
    sends no PRIORITY frame: 300 such requests in one burst are served."""
    with H2Client(shared.port) as client:
        client.wait(lambda: bool(client.server_settings), 10, "the server's SETTINGS")
        frames, streams = [], []
        for _ in range(300):
            stream = client.next_stream_id
            client.next_stream_id += 2
            streams.append(stream)
            client.answers[stream] = Answer()
            block = client.header_block([(b":method", b"GET"), (b":scheme", b"http"),
                                         (b":path", b"/"), (b":authority", b"127.0.0.1")])
            frames.append(HeadersFrame(stream, data=block, depends_on=0, stream_weight=200,
                                       flags=("END_HEADERS", "END_STREAM", "PRIORITY"))
                          .serialize())
        # in batches below the concurrency limit, each answered before the next
        for start in range(0, 300, 50):
            client.send_raw(b"".join(frames[start:start + 50]))
            for stream in streams[start:start + 50]:
                assert client.answer(stream).status == 200
        assert not client.goaways, client.describe()


def test_continuation_flood_gets_goaway(shared: ServerProcess) -> None:
    with _bystander(shared), H2Client(shared.port) as attacker:
        block = attacker.header_block([(b":method", b"GET"), (b":scheme", b"http"),
                                       (b":path", b"/"), (b":authority", b"127.0.0.1")])
        frames = [HeadersFrame(1, data=block).serialize()]  # no END_HEADERS: more follows
        frames += [ContinuationFrame(1, data=b"\x40\x01a\x01b").serialize()
                   for _ in range(10_000)]
        _flood(attacker, frames, per_write=500)
        _ended_with_goaway(attacker, PROTOCOL_ERROR)
        _logged_once(shared, _client_port(attacker), "HTTP/2 protocol error")


def test_an_hpack_bomb_gets_goaway(shared: ServerProcess) -> None:
    """A 4 KB header in the dynamic table, then referenced by one byte many times:
    a 6 KB block decoding to ~ 1 MB, past --h2-max-header-list-size 16384."""
    with _bystander(shared), H2Client(shared.port) as attacker:
        block = attacker.header_block([(b":method", b"GET"), (b":scheme", b"http"),
                                       (b":path", b"/"), (b":authority", b"127.0.0.1"),
                                       (b"x-bomb", b"a" * 4000)])
        block += b"\xbe" * 250  # indexed field 62: the newest dynamic entry, x-bomb
        frame = HeadersFrame(1, data=block, flags=("END_HEADERS", "END_STREAM"))
        _attack(attacker, frame.serialize())
        _ended_with_goaway(attacker, ENHANCE_YOUR_CALM)
        _logged_once(shared, _client_port(attacker), "Oversized header block")


async def test_more_streams_than_the_limit_get_goaway(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--h2-max-concurrent-streams", "4") as server, \
            _bystander(server), H2Client(server.port) as attacker:
        attacker.wait(lambda: bool(attacker.server_settings), 10, "the server's SETTINGS")
        assert attacker.server_settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 4
        for _ in range(6):
            attacker.request(b"/slow?s=30")
        _ended_with_goaway(attacker, PROTOCOL_ERROR)
        _logged_once(server, _client_port(attacker), "HTTP/2 protocol error")


async def test_a_zero_window_stall_is_timed_out_and_its_handler_ends(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--body-timeout", "1") as server, _bystander(server), \
            H2Client(server.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0},
                     auto_window=False) as staller:
        stream = staller.request(b"/big?n=100000&id=stall")
        staller.wait(lambda: bool(staller.answers[stream].headers), 10, "the response head")
        started = time.monotonic()
        _ended_with_goaway(staller, FLOW_CONTROL_ERROR)
        assert time.monotonic() - started < 10
        assert staller.answers[stream].data == b""
        await wait_for(lambda: (tmp_path / "ended-stall").exists(), 10,
                       "the stalled handler to end")
        _logged_once(server, _client_port(staller), "window stayed closed")


def test_the_h2_flags_are_what_the_server_advertises(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--h2-max-concurrent-streams", "7",
                   "--h2-initial-window-size", "1048576", "--h2-max-frame-size", "32768",
                   "--h2-max-header-list-size", "4096") as server, \
            H2Client(server.port) as client:
        client.wait(lambda: bool(client.server_settings), 10, "the server's SETTINGS")
        settings = client.server_settings
        assert settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 7
        assert settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1048576
        assert settings[SettingsFrame.MAX_FRAME_SIZE] == 32768
        assert settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 4096
        # the connection's window follows the streams': a 1 MB body goes in at once
        client.wait(lambda: client.send_window >= 1048576, 10, "the connection's window")
        body = b"y" * 1_000_000
        stream = client.request(b"/echo", method=b"POST", body=body)
        assert json.loads(client.answer(stream).data)["size"] == len(body)


def test_a_window_opened_well_within_the_body_timeout_keeps_the_connection(
        tmp_path: Path) -> None:
    """The stall timer must count from when the stream stalled, not from the last
    WINDOW_UPDATE the connection ever saw."""
    with h2_server(tmp_path, "--body-timeout", "2") as server, \
            H2Client(server.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000},
                     auto_window=False) as client:
        # the connection grows older than --body-timeout, no window moving meanwhile
        assert client.answer(client.request(b"/slow?s=2.5"), timeout=15).status == 200
        stream = client.request(b"/big?n=3000")
        answer = client.answers[stream]
        client.wait(lambda: len(answer.data) >= 1000, 10, "the first window's data")
        # a reader slow to open the window (its behaviour, not a synchronisation):
        # a quarter of --body-timeout, reading all the while
        until = time.monotonic() + 0.5
        while time.monotonic() < until and not (client.closed or client.reset):
            client.read_frame(until - time.monotonic())
        assert not client.goaways, client.describe()
        client.window_update(stream, 2000)
        client.answer(stream)
    assert len(answer.data) == 3000


async def test_a_request_body_that_stops_coming_is_timed_out(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--body-timeout", "1") as server, \
            H2Client(server.port) as client:
        stream = client.request(b"/echo?id=slow-body", method=b"POST", end=False)
        client.send_body(stream, b"the first part", end=False)
        answer = client.answer(stream, timeout=10)  # and nothing more is ever sent
        assert answer.status == 408 or answer.reset is not None, answer
        await wait_for(lambda: (tmp_path / "ended-slow-body").exists(), 10,
                       "the handler to end")


# -- 5. flow control ------------------------------------------------------------------


def test_the_server_sends_no_more_than_the_stream_window(shared: ServerProcess) -> None:
    with H2Client(shared.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000},
                  auto_window=False) as client:
        stream = client.request(b"/big?n=5000")
        answer = client.answers[stream]
        client.wait(lambda: len(answer.data) >= 1000, 10, "the first window's data")
        _quiet_after(client)
        assert len(answer.data) == 1000 and not answer.ended
        client.window_update(stream, 2500)
        client.wait(lambda: len(answer.data) >= 3500, 10, "the second window's data")
        _quiet_after(client)
        assert len(answer.data) == 3500 and not answer.ended
        client.window_update(stream, 1500)
        client.answer(stream)
    assert answer.data == b"x" * 5000 and answer.status == 200


def test_the_server_sends_no_more_than_the_connection_window(shared: ServerProcess) -> None:
    with H2Client(shared.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20},
                  auto_window=False) as client:
        stream = client.request(b"/big?n=100000")
        answer = client.answers[stream]
        client.wait(lambda: len(answer.data) >= 65535, 10, "the connection window's data")
        _quiet_after(client)
        assert len(answer.data) == 65535 and not answer.ended
        client.window_update(0, 100000 - 65535)
        client.answer(stream)
    assert len(answer.data) == 100000


def test_a_one_megabyte_post_arrives_whole_through_the_default_window(
        shared: ServerProcess) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: sixteen times the default window
    with H2Client(shared.port) as client:
        stream = client.request(b"/echo", method=b"POST", body=body)
        answer = client.answer(stream, timeout=30)
    assert answer.status == 200
    assert json.loads(answer.data) == {"size": len(body),
                                       "sha256": hashlib.sha256(body).hexdigest()}


# -- 6. lifecycle: stop, reload, idle ----------------------------------------------


def _frame_kinds(client: H2Client) -> list[str]:
    return [type(frame).__name__ for frame in client.frames]


def _two_phase_goaway(client: H2Client, in_flight: int) -> None:
    """GOAWAY(2^31-1), a PING (answered by the client), then GOAWAY(in_flight)."""
    client.wait(lambda: len(client.goaways) >= 2, 15, "two GOAWAYs")
    first, second = client.goaways[:2]
    assert first.last_stream_id == MAX_STREAM_ID and first.error_code == NO_ERROR
    assert second.last_stream_id == in_flight and second.error_code == NO_ERROR
    at_first = client.frames.index(first)
    between = client.frames[at_first:client.frames.index(second)]
    assert any(isinstance(f, PingFrame) and "ACK" not in f.flags for f in between), \
        client.describe()


def _never_raises_last_stream_id(client: H2Client) -> None:
    ids = [goaway.last_stream_id for goaway in client.goaways]
    assert ids == sorted(ids, reverse=True), f"GOAWAY last stream ids went up: {ids}"


async def test_sigterm_two_phase_goaway_drains_in_flight_and_refuses_new_streams(
        tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "15") as server, \
            H2Client(server.port) as client:
        in_flight = client.request(b"/slow?s=2&id=draining")
        await wait_for(lambda: (tmp_path / "started-draining").exists(), 10, "handler start")
        server.proc.send_signal(signal.SIGTERM)
        _two_phase_goaway(client, in_flight)
        late = client.request(b"/")
        assert client.answer(late).reset == REFUSED_STREAM
        answer = client.answer(in_flight, timeout=15)
        assert answer.status == 200 and answer.data.startswith(b"slow ok ")
        client.wait_closed(15)
        assert not client.reset
        assert server.proc.wait(20) == 0


async def test_the_last_goaway_never_raises_the_last_stream_id(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "15") as server, \
            H2Client(server.port) as client:
        in_flight = client.request(b"/slow?s=1&id=last-id")
        await wait_for(lambda: (tmp_path / "started-last-id").exists(), 10, "handler start")
        server.proc.send_signal(signal.SIGTERM)
        _two_phase_goaway(client, in_flight)
        assert client.answer(client.request(b"/")).reset == REFUSED_STREAM
        client.answer(in_flight, timeout=15)
        client.wait_closed(15)
    _never_raises_last_stream_id(client)


async def test_a_drained_connection_ends_with_one_last_goaway(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "15") as server, \
            H2Client(server.port) as busy, H2Client(server.port) as idle:
        assert idle.answer(idle.request(b"/")).status == 200
        in_flight = busy.request(b"/slow?s=1&id=one-goaway")
        await wait_for(lambda: (tmp_path / "started-one-goaway").exists(), 10,
                       "handler start")
        server.proc.send_signal(signal.SIGTERM)
        idle.wait_closed(15)
        busy.answer(in_flight, timeout=15)
        busy.wait_closed(15)
        assert server.proc.wait(20) == 0
        output = server.output()
    assert len(idle.goaways) <= 3, f"{len(idle.goaways)} GOAWAYs to the idle connection"
    assert len(busy.goaways) <= 3, f"{len(busy.goaways)} GOAWAYs to the busy connection"
    assert "Traceback" not in output, output[-3000:]


async def test_sighup_two_phase_goaway_drains_in_flight_and_the_new_worker_serves(
        tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "15") as server, \
            H2Client(server.port) as client:
        old_pid = client.answer(client.request(b"/")).data.split()[1]
        in_flight = client.request(b"/slow?s=2&id=reload")
        await wait_for(lambda: (tmp_path / "started-reload").exists(), 10, "handler start")
        server.proc.send_signal(signal.SIGHUP)
        _two_phase_goaway(client, in_flight)
        answer = client.answer(in_flight, timeout=15)
        assert answer.status == 200 and answer.data == b"slow ok %s\n" % old_pid
        client.wait_closed(15)
        assert not client.reset
        new_pid = old_pid
        deadline = time.monotonic() + 20
        while new_pid == old_pid:  # the old worker may still take a connection or two
            assert time.monotonic() < deadline, "no new worker answered"
            with H2Client(server.port) as fresh:
                reply = fresh.answer(fresh.request(b"/"))
                if reply.status == 200:
                    new_pid = reply.data.split()[1]
        server.wait_for_line("reload finished", 20)


async def test_a_stream_sent_before_the_ping_answer_is_served(tmp_path: Path) -> None:
    """The point of the first GOAWAY: a stream the client sent before it saw it (here:
    before answering its PING) is still served, and the last GOAWAY names it."""
    with h2_server(tmp_path, "--graceful-timeout", "15") as server, \
            H2Client(server.port, answer_pings=False) as client:
        in_flight = client.request(b"/slow?s=1&id=before-ping")
        await wait_for(lambda: (tmp_path / "started-before-ping").exists(), 10,
                       "handler start")
        server.proc.send_signal(signal.SIGTERM)
        client.wait(lambda: any(isinstance(f, PingFrame) for f in client.frames), 15,
                    "the first GOAWAY's PING")
        assert client.goaways[0].last_stream_id == MAX_STREAM_ID
        ping = next(f for f in client.frames if isinstance(f, PingFrame))
        crossing = client.request(b"/slow?s=0.2&id=crossing")
        client.send(PingFrame(0, opaque_data=ping.opaque_data, flags=("ACK",)))
        client.wait(lambda: len(client.goaways) >= 2, 15, "the last GOAWAY")
        assert client.goaways[1].last_stream_id == crossing
        assert client.answer(crossing, timeout=15).status == 200
        assert client.answer(in_flight, timeout=15).status == 200


async def test_a_client_that_never_answers_the_ping_still_gets_the_last_goaway(
        tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "15") as server, \
            H2Client(server.port, answer_pings=False) as client:
        in_flight = client.request(b"/slow?s=5&id=no-ping")
        await wait_for(lambda: (tmp_path / "started-no-ping").exists(), 10, "handler start")
        server.proc.send_signal(signal.SIGTERM)
        client.wait(lambda: bool(client.goaways), 15, "the first GOAWAY")
        first_at = time.monotonic()
        client.wait(lambda: len(client.goaways) >= 2, 15, "the last GOAWAY")
        # GOAWAY_PING_WAIT is 1 s: not the in-flight stream's 5 s
        assert time.monotonic() - first_at < 4
        assert client.goaways[1].last_stream_id == in_flight
        assert client.answer(in_flight, timeout=15).status == 200


def test_an_idle_connection_gets_goaway_no_error_and_a_clean_close(tmp_path: Path) -> None:
    """After its last stream (--keep-alive-timeout), or with none at all
    (--header-timeout)."""
    with h2_server(tmp_path, "--keep-alive-timeout", "1", "--header-timeout", "2") as server, \
            H2Client(server.port) as served, H2Client(server.port) as silent:
        assert served.answer(served.request(b"/")).status == 200
        started = time.monotonic()
        served.wait_closed(15)
        silent.wait_closed(15)
        assert time.monotonic() - started < 10
        for client in (served, silent):
            assert client.goaways, client.describe()
            assert client.goaways[-1].error_code == NO_ERROR, client.describe()
            assert client.closed and not client.reset  # FIN, not RST
            assert isinstance(client.frames[-1], GoAwayFrame), client.describe()


async def test_a_stop_past_the_grace_period_answers_grpc_calls_unavailable(
        tmp_path: Path) -> None:
    with h2_server(tmp_path, "--graceful-timeout", "1") as server, \
            H2Client(server.port) as client:
        unstarted = client.request(b"/grpc?s=60&id=stop-unstarted", method=b"POST",
                                   headers=GRPC, body=b"\x00\x00\x00\x00\x00")
        started = client.request(b"/grpc?s=60&started=1&id=stop-started", method=b"POST",
                                 headers=GRPC, body=b"\x00\x00\x00\x00\x00")
        client.wait(lambda: bool(client.answers[started].data), 10, "the first message")
        await wait_for(lambda: (tmp_path / "started-stop-unstarted").exists(), 10,
                       "handler start")
        server.proc.send_signal(signal.SIGTERM)
        one, two = client.answer(unstarted, timeout=20), client.answer(started, timeout=20)
        client.wait_closed(15)
        assert not client.reset
        assert server.proc.wait(20) == EXIT_FORCED_STOP  # the grace period ran out
    # trailers-only for the call that had sent nothing; trailers after the message
    assert one.status == 200 and one.reset is None, one
    assert one.header(b"grpc-status") == b"14" and len(one.blocks) == 1, one.blocks
    assert two.status == 200 and two.reset is None, two
    assert two.data == b"\x00\x00\x00\x00\x05hello"
    assert two.trailer(b"grpc-status") == b"14", two.blocks
    assert (tmp_path / "cancelled-stop-unstarted").exists()
    assert (tmp_path / "cancelled-stop-started").exists()


# -- 7. --http 1 | 2 ------------------------------------------------------------------


async def test_http_1_answers_the_http2_preface_at_once_and_serves_http1(
        tmp_path: Path) -> None:
    with h2_server(tmp_path, "--http", "1") as server:
        raw = await raw_exchange(server.port, PREFACE, timeout=10)  # an answer, no hang
        assert raw.startswith(b"HTTP/1.1 "), raw
        assert not (await raw_exchange(server.port, PREFACE, timeout=10)).startswith(
            b"\x00"), "an HTTP/2 frame from --http 1"
        raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n", timeout=10)
        assert status_of(raw) == 200, raw


async def test_http_1_answers_the_http2_preface_505(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--http", "1") as server:
        raw = await raw_exchange(server.port, PREFACE, timeout=10)
    assert status_of(raw) == 505, raw


async def test_http_2_answers_an_http1_request_505(tmp_path: Path) -> None:
    with h2_server(tmp_path, "--http", "2") as server:
        raw = await raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        assert status_of(raw) == 505, raw
        with H2Client(server.port) as client:
            assert client.answer(client.request(b"/")).status == 200
