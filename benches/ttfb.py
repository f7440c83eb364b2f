"""Time to first byte for a resumed HTTP/3 request with and without 0-RTT,
against HTTP/2 over TCP + TLS 1.3 for the same request (a new connection
each time). Run by benches/zero_rtt_ttfb.sh inside a network namespace whose
loopback delays every packet.

Usage: ttfb.py HOST PORT CA_FILE RTT_MS RUNS [relay]

With `relay` (for kernels without netem), the client goes through a
user-space relay in this process that delays every UDP datagram and TCP
chunk by RTT/2 in each direction, and a new TCP connection's first bytes by
one more RTT (the TCP handshake the relay's local accept skips).
"""
import asyncio
import os
import ssl
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "sdk"))
import httpx  # noqa: E402
from h3client import fresh_ticket, resumed_request  # noqa: E402

host, port, ca, rtt, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
use_relay = len(sys.argv) > 6 and sys.argv[6] == "relay"


class Delayed:
    """Schedules callbacks `delay` seconds out, never reordering them."""

    def __init__(self, delay):
        self.delay, self.last = delay, 0.0

    def at(self, loop, fn, not_before=0.0):
        t = max(loop.time() + self.delay, self.last, not_before)
        self.last = t
        loop.call_at(t, fn)


class UdpRelay(asyncio.DatagramProtocol):
    """Client side: one upstream socket per client address."""

    def __init__(self, target, delay):
        self.target, self.delay, self.peers = target, delay, {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        loop = asyncio.get_event_loop()
        peer = self.peers.get(addr)
        if peer is None:
            peer = self.peers[addr] = {"up": None, "queue": [], "out": Delayed(self.delay),
                                       "back": Delayed(self.delay)}
            relay = self

            class Up(asyncio.DatagramProtocol):
                def datagram_received(self, d, _):
                    peer["back"].at(loop, lambda: relay.transport.sendto(d, addr))

            async def open_up():
                t, _ = await loop.create_datagram_endpoint(Up, remote_addr=self.target)
                peer["up"] = t
                for d in peer.pop("queue"):
                    t.sendto(d)

            loop.create_task(open_up())

        def send():
            if peer["up"] is None:
                peer["queue"].append(data)
            else:
                peer["up"].sendto(data)

        peer["out"].at(loop, send)


async def tcp_relay_conn(reader, writer, target, delay):
    loop = asyncio.get_event_loop()
    accepted = loop.time()
    up_r, up_w = await asyncio.open_connection(*target)

    async def pump(src, dst, d, first_not_before):
        nb = first_not_before
        while True:
            data = await src.read(65536)
            if not data:
                d.at(loop, lambda: dst.close())
                return
            d.at(loop, lambda data=data: dst.write(data), nb)
            nb = 0.0

    try:
        await asyncio.gather(
            pump(reader, up_w, Delayed(delay), accepted + 3 * delay),
            pump(up_r, writer, Delayed(delay), 0.0),
            return_exceptions=True)
    except asyncio.CancelledError:
        pass  # the benchmark ended


async def start_relay(target_port, delay):
    loop = asyncio.get_event_loop()
    target = (host, target_port)
    udp, _ = await loop.create_datagram_endpoint(lambda: UdpRelay(target, delay),
                                                 local_addr=("127.0.0.1", 0))
    relay_port = udp.get_extra_info("sockname")[1]
    await asyncio.start_server(lambda r, w: tcp_relay_conn(r, w, target, delay),
                               "127.0.0.1", relay_port)
    return relay_port
NAME = "localhost"
GET = ("GET", "/v1/models/mock-gpt", b"")
POST = ("POST", "/v1/chat/completions",
        b'{"model":"mock-gpt","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}')


async def h3(request, early):
    samples, accepted = [], 0
    for _ in range(runs):
        ticket = await fresh_ticket(host, port, NAME, ca)  # not timed
        method, path, body = request
        c, status, _, ttfb = await resumed_request(host, port, NAME, ca, ticket, method, path,
                                                   body, early=early)
        assert status == 200, status
        assert c.resumed, "the ticket resumed the session"
        accepted += c.early_data_accepted
        samples.append(ttfb)
    return samples, accepted


async def h2(request):
    ctx = ssl.create_default_context(cafile=ca)
    samples = []
    for _ in range(runs):
        method, path, body = request
        # (The relay, if any, runs on this event loop: the client must be async.)
        async with httpx.AsyncClient(http2=True, verify=ctx) as client:
            t0 = time.monotonic()
            async with client.stream(method, f"https://{host}:{port}{path}", content=body or None,
                                     headers={"content-type": "application/json",
                                              "host": f"{NAME}:{port}"},
                                     extensions={"sni_hostname": NAME}) as r:
                ttfb = time.monotonic() - t0
                assert r.status_code == 200 and r.http_version == "HTTP/2", r
                await r.aread()
        samples.append(ttfb)
    return samples


def row(name, samples, note=""):
    ms = sorted(s * 1000 for s in samples)
    med = statistics.median(ms)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    print(f"| {name:<40} | {med:8.1f} | {p90:8.1f} | {med / rtt:5.2f} | {note} |")


async def main():
    global port
    how = "netem on loopback"
    if use_relay:
        port = await start_relay(port, rtt / 2000)
        how = "user-space delay relay"
    print(f"RTT {rtt:.0f} ms ({how}), {runs} runs each, new connection per sample")
    print("| request | median TTFB ms | p90 ms | RTTs | note |")
    print("|---|---|---|---|---|")
    for label, req in (("GET /v1/models/{model}", GET), ("POST /v1/chat/completions", POST)):
        s, acc = await h3(req, early=True)
        row(f"HTTP/3 resumed, 0-RTT, {label}", s, f"early data accepted {acc}/{runs}")
        s, _ = await h3(req, early=False)
        row(f"HTTP/3 resumed, 1-RTT, {label}", s)
        row(f"HTTP/2 TCP+TLS 1.3, {label}", await h2(req))


asyncio.run(main())
