"""Sends HTTP/3 requests that RFC 9114 §4.1.2/§4.2 makes malformed, with
aioquic (which sends header bytes as given), and prints one JSON line: for
each case the status, or "reset" when the server refused the stream."""
import asyncio
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.h3.events import HeadersReceived
from aioquic.quic.events import StreamReset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from h3client import Client, configuration  # noqa: E402


class Probe(Client):
    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            w = self.waiters.get(event.stream_id)
            if w is not None and not w["done"].done():
                w["status"] = "reset"
                w["done"].set_result(True)
        super().quic_event_received(event)


async def send(c, authority, extra, body, end=True):
    sid = c._quic.get_next_available_stream_id()
    headers = [(b":method", b"POST"), (b":scheme", b"https"),
               (b":authority", authority.encode()), (b":path", b"/v1/chat/completions"),
               (b"content-type", b"application/json")] + extra
    w = {"status": None, "body": b"", "first_byte": None,
         "done": asyncio.get_event_loop().create_future()}
    c.waiters[sid] = w
    c.h3.send_headers(sid, headers, end_stream=False)
    c.h3.send_data(sid, body, end_stream=True)
    c.transmit()
    try:
        await asyncio.wait_for(w["done"], 5)
    except asyncio.TimeoutError:
        return "no answer"
    return w["status"]


async def main(port, ca):
    body = json.dumps({"model": "mock-1", "max_tokens": 5,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()
    n = str(len(body)).encode()
    cases = {
        "well_formed": [(b"content-length", n)],
        "uppercase_name": [(b"X-Upper", b"1")],
        "connection": [(b"connection", b"keep-alive")],
        "transfer_encoding": [(b"transfer-encoding", b"chunked")],
        "content_length_above": [(b"content-length", str(len(body) + 7).encode())],
        "content_length_below": [(b"content-length", str(len(body) - 7).encode())],
    }
    out = {}
    async with connect("127.0.0.1", port, configuration=configuration("localhost", ca),
                       create_protocol=Probe) as c:
        for name, extra in cases.items():
            out[name] = await send(c, f"localhost:{port}", extra, body)
    print(json.dumps(out))


asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
