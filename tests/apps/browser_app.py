"""The application tests/test_browser.py serves to a real browser: one page that
drives a WebSocket back to the same server and reports what it saw.

``GET /`` is the page (``?mode=exchange`` or ``?mode=reload``); ``/ws`` is the
WebSocket. The page writes its findings as JSON into ``<pre id="result">`` and sets
the title to ``done`` (or ``failed``), which the test waits for; ``?mode=reload``
sets the title to ``open`` once its first session is open, so that the test knows
when to send SIGHUP.
"""

from __future__ import annotations

import json
import os
from typing import Final

from tether.asgi import Message, Receive, Scope, Send

#: what the page asks the server to close with, and the code and reason it closes with
CLOSE_REQUEST: Final = "close-please"
CLOSE_CODE: Final = 4001
CLOSE_REASON: Final = "closed by tether"
SUBPROTOCOL: Final = "tether.test"

PAGE: Final = """<!doctype html>
<html><head><meta charset="utf-8"><title>running</title></head>
<body><pre id="result"></pre>
<script>
"use strict";
const result = {mode: new URLSearchParams(location.search).get("mode") || "exchange"};
const url = `ws://${location.host}/ws`;

function finish(title) {
  document.getElementById("result").textContent = JSON.stringify(result);
  document.title = title;
}
window.onerror = (message) => { result.error = String(message); finish("failed"); };

// One WebSocket, as a queue of what arrives and a promise of how it ends.
function open(protocols) {
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  const inbox = [], waiting = [];
  ws.onmessage = (event) => {
    const waiter = waiting.shift();
    if (waiter) waiter(event.data); else inbox.push(event.data);
  };
  const closed = new Promise((resolve) => {
    ws.onclose = (event) => resolve({code: event.code, reason: event.reason,
                                     wasClean: event.wasClean});
  });
  const opened = new Promise((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("WebSocket error before open"));
  });
  const next = () => inbox.length ? Promise.resolve(inbox.shift())
                                  : new Promise((resolve) => waiting.push(resolve));
  return {ws, opened, closed, next};
}

// Deterministic bytes (xorshift32) that deflate cannot shrink, and text that it can.
function noise(length, seed) {
  const out = new Uint8Array(length);
  let x = seed;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}
const sameBytes = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

async function exchange() {
  const session = open(["__SUBPROTOCOL__"]);
  await session.opened;
  result.protocol = session.ws.protocol;
  result.extensions = session.ws.extensions;
  result.greeting = JSON.parse(await session.next());
  const text = "h\\u00e9llo from a browser \\u2713";
  session.ws.send(text);
  result.textEcho = (await session.next()) === text;
  const small = noise(1000, 7);
  session.ws.send(small);
  result.binaryEcho = sameBytes(new Uint8Array(await session.next()), small);
  const bigText = "tether ".repeat(30000);            // 210 KB, compresses well
  session.ws.send(bigText);
  const bigTextBack = await session.next();
  result.bigTextEcho = bigTextBack === bigText;
  result.bigTextLength = bigTextBack.length;
  const bigBinary = noise(300000, 12345);              // 300 KB, does not compress
  session.ws.send(bigBinary);
  const bigBinaryBack = new Uint8Array(await session.next());
  result.bigBinaryEcho = sameBytes(bigBinaryBack, bigBinary);
  result.bigBinaryLength = bigBinaryBack.length;
  session.ws.send("__CLOSE_REQUEST__");
  result.close = await session.closed;
}

async function reload() {
  const first = open([]);
  await first.opened;
  result.firstPid = Number(await first.next());
  document.title = "open";                              // the test sends SIGHUP now
  result.close = await first.closed;
  const second = open([]);
  await second.opened;
  result.secondPid = Number(await second.next());
  second.ws.send("still there?");
  result.afterReload = await second.next();
  second.ws.close(1000, "bye");
  result.secondClose = await second.closed;
}

(result.mode === "reload" ? reload() : exchange()).then(
  () => finish("done"),
  (error) => { result.error = String(error); finish("failed"); });
</script></body></html>
""".replace("__SUBPROTOCOL__", SUBPROTOCOL).replace("__CLOSE_REQUEST__", CLOSE_REQUEST)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The page over HTTP, the WebSocket at ``/ws``."""
    if scope["type"] == "lifespan":
        while True:
            if (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": PAGE.encode()})
        return
    await session(scope, receive, send)


async def session(scope: Scope, receive: Receive, send: Send) -> None:
    """Greet with the worker's pid and what the browser offered, echo every message,
    close with :data:`CLOSE_CODE` when asked to."""
    await receive()  # websocket.connect
    offered = scope["subprotocols"]
    await send({"type": "websocket.accept",
                "subprotocol": SUBPROTOCOL if SUBPROTOCOL in offered else None})
    extensions = [value.decode("latin-1") for name, value in scope["headers"]
                  if name == b"sec-websocket-extensions"]
    if offered:
        greeting = {"pid": os.getpid(), "offered": extensions}
        await send({"type": "websocket.send", "text": json.dumps(greeting)})
    else:
        await send({"type": "websocket.send", "text": str(os.getpid())})
    while True:
        message: Message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == CLOSE_REQUEST:
            await send({"type": "websocket.close", "code": CLOSE_CODE, "reason": CLOSE_REASON})
            return
        reply: Message = {"type": "websocket.send"}
        if message.get("text") is not None:
            reply["text"] = message["text"]
        else:
            reply["bytes"] = message["bytes"]
        await send(reply)
