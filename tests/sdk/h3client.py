"""A small HTTP/3 client on aioquic that keeps session tickets, so it can
resume and send requests as 0-RTT early data. Shared by the 0-RTT replay
check (tests) and the time-to-first-byte benchmark (benches/ttfb.py)."""
import asyncio
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            w = self.waiters.get(getattr(ev, "stream_id", None))
            if w is None:
                continue
            if isinstance(ev, HeadersReceived):
                w["status"] = int(dict(ev.headers)[b":status"])
                w["first_byte"] = time.monotonic()
            elif isinstance(ev, DataReceived):
                w["body"] += ev.data
            if getattr(ev, "stream_ended", False) and not w["done"].done():
                w["done"].set_result(True)

    async def request(self, authority, method, path, body=b""):
        """Sends one request; returns (status, body, time to response headers)."""
        sid = self._quic.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"https"),
                   (b":authority", authority.encode()), (b":path", path.encode()),
                   (b"content-type", b"application/json")]
        w = {"status": None, "body": b"", "first_byte": None,
             "done": asyncio.get_event_loop().create_future()}
        self.waiters[sid] = w
        t0 = time.monotonic()
        self.h3.send_headers(sid, headers, end_stream=not body)
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        await asyncio.wait_for(w["done"], 10)
        return w["status"], w["body"], w["first_byte"] - t0

    @property
    def early_data_accepted(self):
        return bool(self._quic.tls.early_data_accepted)

    @property
    def resumed(self):
        return bool(self._quic.tls.session_resumed)


def configuration(server_name, ca, ticket=None):
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    c.load_verify_locations(ca)
    c.session_ticket = ticket
    return c


async def fresh_ticket(host, port, server_name, ca):
    """A full handshake and one request; returns a ticket the server issued."""
    tickets = []
    async with connect(host, port, configuration=configuration(server_name, ca),
                       create_protocol=Client, session_ticket_handler=tickets.append) as c:
        await c.request(f"{server_name}:{port}", "GET", "/health")
        for _ in range(50):
            if tickets:
                break
            await asyncio.sleep(0.02)
    assert tickets, "the server issued no session ticket"
    return tickets[-1]


async def resumed_request(host, port, server_name, ca, ticket, method, path, body=b"",
                          early=True, on_ticket=None):
    """Connects with `ticket` and sends one request: in the 0-RTT flight when
    `early`, else after the handshake. Returns (client, status, body, ttfb)
    where ttfb counts from the start of the connection."""
    t0 = time.monotonic()
    async with connect(host, port, configuration=configuration(server_name, ca, ticket),
                       create_protocol=Client, wait_connected=not early,
                       session_ticket_handler=on_ticket) as c:
        status, data, _ = await c.request(f"{server_name}:{port}", method, path, body)
        first_byte = c.waiters[max(c.waiters)]["first_byte"] - t0
        return c, status, data, first_byte


async def server_cids(host, port, server_name, ca, switches=3):
    """Every connection ID the server gave this client: the Source CID of
    its handshake and those of its NEW_CONNECTION_ID frames. Switches to a
    new one `switches` times (a request on each) so the server is seen to
    route them. Returns (hex CIDs in the order received, request statuses)."""
    seen, statuses = [], []

    def note(quic):
        for c in [quic._peer_cid] + list(quic._peer_cid_available):
            if c.cid.hex() not in seen:
                seen.append(c.cid.hex())

    async with connect(host, port, configuration=configuration(server_name, ca),
                       create_protocol=Client) as c:
        statuses.append((await c.request(f"{server_name}:{port}", "GET", "/health"))[0])
        for _ in range(100):
            if c._quic._peer_cid_available:
                break
            await asyncio.sleep(0.02)
        note(c._quic)
        for _ in range(switches):
            if not c._quic._peer_cid_available:
                break
            c._quic.change_connection_id()
            statuses.append((await c.request(f"{server_name}:{port}", "GET", "/health"))[0])
            note(c._quic)
    return seen, statuses


if __name__ == "__main__":
    # h3client.py cids PORT CA_FILE: prints {"cids": [hex…], "statuses": [...]}
    import json
    import sys

    if sys.argv[1:2] == ["cids"]:
        cids, statuses = asyncio.run(server_cids("127.0.0.1", int(sys.argv[2]), "localhost",
                                                 sys.argv[3]))
        print(json.dumps({"cids": cids, "statuses": statuses}))
    else:
        sys.exit("usage: h3client.py cids PORT CA_FILE")
