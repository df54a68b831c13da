#!/usr/bin/env python3
"""Load and slow-client generator for bench/load.sh (issue 7): one scenario per run, against
one relayd on loopback.

usage: load.py SCENARIO --port PORT --pid PID [options]

  idle       SESSIONS sessions connect, are greeted, say EHLO and stay idle; peak and steady
             RSS; a legitimate client sends messages meanwhile (latency); then the sessions
             are left until relayd's command timeout closes them.
  busy       SESSIONS sessions in the middle of DATA, each having sent BODY bytes; RSS; then
             every message ends at once (SESSIONS commits together).
  slowloris  SLOW clients trickle a command line that never ends, SLOW more whole NOOP
             lines, SLOW more a body after DATA, one byte a second each; when relayd closes
             each of them, with what reply; a legitimate client sends meanwhile.
  flood      FLOOD connections opened at once against max_connections: how many are admitted,
             what the rest are told and how fast; admitted sessions still take mail; the
             per-IP limit; a legitimate client after the flood.
  emfile     SESSIONS connections against a relayd whose descriptor limit is lower: relayd's
             CPU while it cannot accept, and service once descriptors are free again.

Clients connect from many loopback addresses (127.A.B.C), PER_IP to an address, so that the
per-IP limit does not stand in for the total one. Prints "name: value" lines; a line starting
with "FAIL" is a check that did not hold, and the exit status is then 1.
"""
import argparse
import asyncio
import functools
import smtplib
import ssl
import statistics
import sys
import time
import urllib.request

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print(f"FAIL {what}", flush=True)


def report(name, value):
    print(f"{name}: {value}", flush=True)


def memory(pid):
    """VmRSS and VmHWM (peak) of relayd, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid):
    """User plus system CPU time relayd has used, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after its closing parenthesis do not.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def sessions_active(admin):
    """relayd_smtp_sessions_active from relayd's admin endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("relayd_smtp_sessions_active "):
                return int(line.split()[1])
    raise RuntimeError("no relayd_smtp_sessions_active in /metrics")


async def until_no_sessions(args, patience=20):
    """Waits until relayd has seen every session end (clients closing is not enough: it
    learns of each close when it next reads)."""
    deadline = time.monotonic() + patience
    while (active := await asyncio.to_thread(sessions_active, args.admin)) > 0:
        if time.monotonic() > deadline:
            check(False, f"sessions ended within {patience} s ({active} still open)")
            return
        await asyncio.sleep(0.05)


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def source(i, per_ip, block):
    """The loopback source address of client i: PER_IP clients to an address."""
    n = i // per_ip
    return f"127.{block}.{n // 250}.{n % 250 + 1}"


def summary(values, unit="ms", decimals=0):
    if not values:
        return "none"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return (f"median {statistics.median(values):.{decimals}f} {unit}, "
            f"p99 {p99:.{decimals}f} {unit}, max {values[-1]:.{decimals}f} {unit} "
            f"(n={len(values)})")


class Client:
    """One raw SMTP connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port, src, timeout=30):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0), limit=4096),
            timeout)
        return cls(reader, writer)

    async def reply(self, timeout=30):
        """The next reply, its lines joined; "" when the server closed the connection."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return "\n".join(lines)
            lines.append(line.decode(errors="replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    async def cmd(self, line, timeout=30):
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply(timeout)

    async def closed(self, timeout):
        """Reads to the end; True if the server closed the connection within timeout."""
        try:
            while await asyncio.wait_for(self.reader.read(4096), timeout):
                pass
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False

    def close(self):
        self.writer.close()


def legitimate_message(port):
    """One whole message with Python's smtplib; its latency in ms, or an error string."""
    started = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="legit.test", timeout=30) as s:
            s.sendmail("legit@client.test", ["rcpt@example.test"],
                       b"Subject: legitimate\r\n\r\nserved while under load\r\n")
    except (smtplib.SMTPException, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return (time.monotonic() - started) * 1000


async def legitimate(port, count, every):
    """COUNT messages, one every EVERY seconds; prints their latency, checks each got 250."""
    latencies, errors = [], []
    for _ in range(count):
        result = await asyncio.to_thread(legitimate_message, port)
        (latencies if isinstance(result, float) else errors).append(result)
        await asyncio.sleep(every)
    report("legitimate client", f"{len(latencies)}/{count} messages got 250; latency "
           + summary(latencies))
    check(not errors, f"legitimate client refused: {errors[:3]}")


ENVELOPE = (("MAIL FROM:<load@client.test>", "250"), ("RCPT TO:<rcpt@example.test>", "250"),
            ("DATA", "354"))


async def commands(client, steps):
    """Sends each (command, expected reply code); None, or what went wrong."""
    for line, code in steps:
        reply = await client.cmd(line)
        if not reply.startswith(code):
            return f"{line.split()[0]}: {reply}"
    return None


@functools.cache
def any_certificate():
    """A TLS context that takes relayd's certificate, whoever signed it (a benchmark). Made
    once: loading the system's CA store takes tens of milliseconds, which a thousand sessions
    would otherwise spend on the generator's one thread."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def greeted_session(port, src, tls=False):
    """Connect, 220, EHLO, 250 (and with TLS: STARTTLS, 220, the handshake, EHLO, 250): a
    Client, or the first reply that was not positive."""
    try:
        client = await Client.open(port, src)
        greeting = await client.reply()
        if not greeting.startswith("220"):
            client.close()
            return greeting or "closed"
        steps = [("EHLO load.test", "250")] + [("STARTTLS", "220")] * tls
        refused = await commands(client, steps)
        if tls and not refused:
            await client.writer.start_tls(any_certificate())
            refused = await commands(client, [("EHLO load.test", "250")])
        if refused:
            client.close()
            return refused.split("\n")[0]
        return client
    except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}"


async def open_sessions(args, count, block):
    """COUNT greeted sessions, at most 200 connecting at a time."""
    gate = asyncio.Semaphore(200)

    async def one(i):
        async with gate:
            return await greeted_session(args.port, source(i, args.per_ip, block), args.tls)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    sessions = [r for r in results if isinstance(r, Client)]
    refused = [r for r in results if not isinstance(r, Client)]
    return sessions, refused


async def closed_by_timeout(sessions, since, limit):
    """Waits (up to LIMIT s) for each session to be closed; the close times and last replies."""

    async def one(client):
        reply = ""
        try:
            reply = await client.reply(timeout=limit)
            await client.closed(timeout=5)
        except (asyncio.TimeoutError, ConnectionError):
            return None, reply
        finally:
            client.close()
        return time.monotonic() - since, reply

    return await asyncio.gather(*(one(c) for c in sessions))


async def idle(args):
    base, _ = memory(args.pid)
    report("RSS before", f"{base:.1f} MiB")
    started = time.monotonic()
    sessions, refused = await open_sessions(args, args.sessions, block=1)
    took = time.monotonic() - started
    report("idle sessions admitted", f"{len(sessions)}/{args.sessions} in {took:.1f} s "
           f"(refused: {sorted(set(refused))[:3]})")
    check(len(sessions) == args.sessions, "every idle session admitted")
    held_at = time.monotonic()
    rss, hwm = memory(args.pid)
    report("RSS with the sessions open", f"{rss:.1f} MiB (peak so far {hwm:.1f} MiB)")
    await legitimate(args.port, args.messages, 0.5)
    rss, hwm = memory(args.pid)
    report("RSS at steady state", f"{rss:.1f} MiB, peak (VmHWM) {hwm:.1f} MiB, "
           f"{len(sessions)} sessions idle")
    check(hwm <= args.rss_goal, f"peak RSS {hwm:.1f} MiB within {args.rss_goal} MiB")
    # The command timeout runs from each session's EHLO reply, before held_at.
    limit = args.command_timeout + 30
    closes = await closed_by_timeout(sessions, held_at, limit)
    fired = [t for t, reply in closes if t is not None and reply.startswith("421 4.4.2")]
    report("idle sessions closed by command_timeout",
           f"{len(fired)}/{len(sessions)} with 421 4.4.2 within "
           f"{max(fired, default=0) + (held_at - started):.1f} s of their first connect "
           f"(command_timeout {args.command_timeout:.0f} s)")
    check(len(fired) == len(sessions), "every idle session closed with 421 4.4.2")
    rss, hwm = memory(args.pid)
    report("RSS after they closed", f"{rss:.1f} MiB")


async def busy(args):
    """SESSIONS sessions in the middle of DATA, BODY bytes of content sent by each; then all
    end their messages at once."""
    base, _ = memory(args.pid)
    sessions, refused = await open_sessions(args, args.sessions, block=6)
    report("sessions admitted", f"{len(sessions)}/{args.sessions} (refused: {sorted(set(refused))[:3]})")
    check(len(sessions) == args.sessions, "every session admitted")
    body = b"Subject: busy\r\n\r\n" + (b"x" * 78 + b"\r\n") * (args.body // 80)

    async def start(client):
        refused = await commands(client, ENVELOPE)
        if not refused:
            client.writer.write(body)
            await client.writer.drain()
        return refused

    refusals = [r for r in await asyncio.gather(*(start(c) for c in sessions)) if r]
    check(not refusals, f"every session in DATA: {refusals[:3]}")
    # The generator cannot ask relayd whether it has read the content (no command in DATA);
    # VmHWM below is the peak whenever it came.
    await asyncio.sleep(2)
    rss, _ = memory(args.pid)
    report("RSS with the sessions in DATA", f"{rss:.1f} MiB ({base:.1f} MiB before), "
           f"{len(sessions)} sessions, {len(body)} bytes of content sent by each")
    started = time.monotonic()
    replies = await asyncio.gather(*(c.cmd(".") for c in sessions), return_exceptions=True)
    took = time.monotonic() - started
    accepted = sum(1 for r in replies if isinstance(r, str) and r.startswith("250"))
    report("messages ended at once", f"{accepted}/{len(sessions)} got 250 in {took:.1f} s")
    check(accepted == len(sessions), "every message accepted")
    for client in sessions:
        client.close()
    rss, hwm = memory(args.pid)
    report("RSS after", f"{rss:.1f} MiB, peak (VmHWM) {hwm:.1f} MiB")


async def trickle(client, data, since, limit):
    """Sends DATA one byte a second until the server closes; when (s after since) and what
    it said last, or (None, ...) if it was still open after LIMIT s."""
    last = ""

    async def listen():
        nonlocal last
        while True:
            line = await client.reader.readline()
            if not line:
                return
            last = line.decode(errors="replace").rstrip("\r\n")

    listener = asyncio.ensure_future(listen())
    i = 0
    try:
        while time.monotonic() - since < limit and not listener.done():
            client.writer.write(data[i % len(data):i % len(data) + 1])
            i += 1
            try:
                await asyncio.wait_for(asyncio.shield(listener), 1.0)
            except asyncio.TimeoutError:
                pass
    except ConnectionError:
        pass
    if not listener.done():
        try:
            await asyncio.wait_for(listener, 2)
        except (asyncio.TimeoutError, ConnectionError):
            listener.cancel()
    client.close()
    closed = listener.done() and not listener.cancelled()
    return (time.monotonic() - since if closed else None), last


async def slow_client(args, i, phase):
    """A session that starts trickling in PHASE: "command" (a line that never ends), "noop"
    (whole NOOP lines, each in time) or "data" (a body): (seconds, last reply)."""
    session = await greeted_session(args.port, source(i, args.per_ip, 2))
    if not isinstance(session, Client):
        return None, f"not admitted: {session}"
    if phase == "data":
        refused = await commands(session, ENVELOPE)
        if refused:
            session.close()
            return None, refused
        data = b"Subject: slow\r\n\r\n" + b"a byte a second, never the end\r\n" * 100
        limit = args.data_timeout * 3 + 10
    elif phase == "noop":
        data = b"NOOP\r\n"
        limit = args.command_timeout * 3 + 10
    else:
        data = b"NOOP " + b"x" * 100000
        limit = args.command_timeout * 3 + 10
    return await trickle(session, data, time.monotonic(), limit)


async def slowloris(args):
    phases = ("command", "noop", "data")
    crowd = [slow_client(args, n * args.slow + i, phase)
             for n, phase in enumerate(phases) for i in range(args.slow)]
    everyone = asyncio.gather(*crowd)
    # Let the crowd take its places before the legitimate client comes.
    await asyncio.sleep(2)
    await legitimate(args.port, args.messages, 1.0)
    results = await everyone
    # What closes each crowd, the reply it should get, and by when (s from its first byte).
    junk_by = (args.junk + 1) * len(b"NOOP\r\n") + 5
    expected = {"command": (f"command_timeout {args.command_timeout:.0f} s", "421 4.4.2",
                            args.command_timeout + 5),
                "noop": (f"max_junk_commands {args.junk}", "421 4.7.0", junk_by),
                "data": (f"data_timeout {args.data_timeout:.0f} s + body at min_data_rate",
                         "421 4.4.2", args.data_timeout + 5)}
    for n, phase in enumerate(phases):
        part = results[n * args.slow:(n + 1) * args.slow]
        limit, code, by = expected[phase]
        closed = [t for t, _ in part if t is not None]
        replies = sorted({reply for t, reply in part if t is not None})
        open_ = sum(1 for t, _ in part if t is None)
        report(f"slowloris, {phase} ({limit})",
               f"{len(closed)}/{len(part)} closed, after "
               + summary([t * 1000 for t in closed]) + f"; last replies {replies}; "
               f"still open at the end: {open_}")
        check(open_ == 0, f"{phase}: a byte-a-second client is closed")
        check(all(r.startswith(code) for r in replies), f"{phase}: {code}")
        check(all(t < by for t in closed), f"{phase}: closed within {by:.0f} s")
    rss, hwm = memory(args.pid)
    report("RSS", f"{rss:.1f} MiB, peak (VmHWM) {hwm:.1f} MiB")


async def flood(args):
    gate = asyncio.Semaphore(args.flood)

    async def one(i):
        async with gate:
            started = time.monotonic()
            try:
                client = await Client.open(args.port, source(i, args.per_ip, 3))
                reply = await client.reply()
            except (OSError, asyncio.TimeoutError) as e:
                return None, f"{type(e).__name__}", 0
            latency = (time.monotonic() - started) * 1000
            if reply.startswith("220"):
                return client, reply, latency
            closed = await client.closed(timeout=5)
            client.close()
            return None, (reply or "closed") + ("" if closed else " (left open)"), latency

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(args.flood)))
    took = time.monotonic() - started
    admitted = [c for c, _, _ in results if c is not None]
    refusals = {}
    for client, reply, _ in results:
        if client is None:
            refusals[reply] = refusals.get(reply, 0) + 1
    refused_ms = [ms for c, r, ms in results if c is None and r.startswith("421 4.7.0")]
    report("flood", f"{args.flood} connections in {took:.1f} s: {len(admitted)} admitted "
           f"(max_connections {args.max_connections})")
    for reply, n in sorted(refusals.items(), key=lambda kv: -kv[1]):
        report("  refused", f"{n} x {reply!r}")
    report("refusal latency (connect to 421)", summary(refused_ms))
    check(len(admitted) == args.max_connections, "exactly max_connections admitted")
    check(len(refused_ms) == args.flood - args.max_connections,
          "every excess connection told 421 4.7.0 and closed")
    check(alive(args.pid), "relayd survives the flood")
    rss, hwm = memory(args.pid)
    report("RSS after the flood", f"{rss:.1f} MiB, peak (VmHWM) {hwm:.1f} MiB")

    async def transaction(client):
        steps = (("EHLO admitted.test", "250"),) + ENVELOPE
        steps += (("Subject: admitted\r\n\r\nin the flood\r\n.", "250"),)
        return await commands(client, steps) or "250"

    # relayd's own time to refuse, without the flood's queue in the generator: one at a time
    # while the admitted sessions still hold every slot.
    alone = []
    for i in range(50):
        started = time.monotonic()
        client = await Client.open(args.port, source(i, 1, 7))
        reply = await client.reply()
        alone.append((time.monotonic() - started) * 1000)
        client.close()
        check(reply.startswith("421 4.7.0"), f"a newcomer to a full relayd is told 421 4.7.0: {reply}")
    report("refusal latency, one connection at a time", summary(alone, "ms", 2))

    outcomes = await asyncio.gather(*(transaction(c) for c in admitted[:10]))
    report("admitted sessions sending a message", f"{outcomes.count('250')}/{len(outcomes)} got 250")
    check(outcomes.count("250") == len(outcomes), "admitted sessions take mail")
    for client in admitted:
        client.close()
    await until_no_sessions(args)

    # The per-IP limit: one address, more connections than it may have.
    wanted = args.per_ip_limit + 5
    same = await asyncio.gather(*(greeted_session(args.port, "127.4.0.1") for _ in range(wanted)))
    inside = [s for s in same if isinstance(s, Client)]
    outside = sorted({s for s in same if not isinstance(s, Client)})
    report("one client address", f"{wanted} connections: {len(inside)} admitted "
           f"(max_connections_per_ip {args.per_ip_limit}), the rest told {outside}")
    check(len(inside) == args.per_ip_limit, "per-IP limit holds")
    for client in inside:
        client.close()
    await legitimate(args.port, args.messages, 0.2)
    check(alive(args.pid), "relayd alive at the end")


async def emfile(args):
    """relayd runs with fewer descriptors than sessions; the excess waits in the backlog."""
    gate = asyncio.Semaphore(200)

    async def one(i):
        async with gate:
            try:
                client = await Client.open(args.port, source(i, args.per_ip, 5), timeout=10)
            except (OSError, asyncio.TimeoutError) as e:
                return None, f"{type(e).__name__}"
            try:
                return client, await client.reply(timeout=3)
            except asyncio.TimeoutError:
                return client, "no greeting (yet)"

    before = cpu_seconds(args.pid)
    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(args.sessions)))
    greeted = [c for c, r in results if c is not None and r.startswith("220")]
    waiting = [c for c, r in results if c is not None and r == "no greeting (yet)"]
    other = [r for c, r in results if c is None or not (r.startswith("220") or r == "no greeting (yet)")]
    report("connections", f"{args.sessions}: {len(greeted)} greeted, {len(waiting)} waiting for "
           f"a greeting (relayd out of descriptors), {len(other)} other {sorted(set(other))[:3]}")
    check(len(waiting) > 0, "the descriptor limit was reached")
    # Out of descriptors for a while: relayd must not spin on accept.
    await asyncio.sleep(5)
    used = cpu_seconds(args.pid) - before
    report("relayd CPU while out of descriptors", f"{used:.2f} s over {time.monotonic() - started:.1f} s")
    check(used < 2, "accept does not spin at EMFILE")
    check(alive(args.pid), "relayd survives EMFILE")
    for client in greeted:
        client.close()
    # Descriptors free again: those waiting in the backlog are greeted now.
    late = await asyncio.gather(*(c.reply(timeout=20) for c in waiting), return_exceptions=True)
    served = sum(1 for r in late if isinstance(r, str) and r.startswith("220"))
    report("waiting connections greeted once descriptors were free", f"{served}/{len(waiting)}")
    for client in waiting:
        client.close()
    await legitimate(args.port, args.messages, 0.2)


# The scenarios by the name load.sh gives on the command line (the module's docstring says what
# each does): nothing else is run by name.
SCENARIOS = {
    "idle": idle,
    "busy": busy,
    "slowloris": slowloris,
    "flood": flood,
    "emfile": emfile,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--admin", type=int, required=True, help="relayd's admin port")
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--body", type=int, default=16384, help="busy: content bytes per session")
    p.add_argument("--slow", type=int, default=50)
    p.add_argument("--flood", type=int, default=2000)
    p.add_argument("--per-ip", type=int, default=10, help="clients to a source address")
    p.add_argument("--max-connections", type=int, default=100)
    p.add_argument("--per-ip-limit", type=int, default=20)
    p.add_argument("--command-timeout", type=float, default=30)
    p.add_argument("--data-timeout", type=float, default=30)
    p.add_argument("--junk", type=int, default=100, help="relayd's max_junk_commands")
    p.add_argument("--messages", type=int, default=10)
    p.add_argument("--rss-goal", type=float, default=100)
    p.add_argument("--tls", action="store_true", help="idle, busy: STARTTLS in every session")
    args = p.parse_args()
    asyncio.run(SCENARIOS[args.scenario](args))
    if failures:
        print(f"{args.scenario}: {len(failures)} check(s) failed", flush=True)
        sys.exit(1)
    print(f"{args.scenario}: every check held", flush=True)


if __name__ == "__main__":
    main()
