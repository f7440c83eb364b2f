"""RFC 8470 / single-use tickets, checked with an independent QUIC stack
(aioquic): the same session ticket presented twice resumes (with early data)
at most once.

Usage: zero_rtt_replay.py PORT CA_FILE
Prints a JSON line: {"tickets": {...}, "uses": [{"resumed", "early_data_accepted", "status"}, ...]}
"""
import asyncio
import json
import sys

from h3client import fresh_ticket, resumed_request

port, ca = int(sys.argv[1]), sys.argv[2]


async def main():
    ticket = await fresh_ticket("127.0.0.1", port, "localhost", ca)
    uses = []
    for _ in range(2):
        c, status, _, _ = await resumed_request("127.0.0.1", port, "localhost", ca, ticket,
                                                "GET", "/v1/models")
        uses.append({"resumed": c.resumed, "early_data_accepted": c.early_data_accepted,
                     "status": status})
    print(json.dumps({"max_early_data": ticket.max_early_data_size, "uses": uses}))


asyncio.run(main())
