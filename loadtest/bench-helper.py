#!/usr/bin/env python3
"""The parts of loadtest/bench.sh that are easier in Python than in bash:
parsing wrk's output, a minimal NATS client (the JetStream API and an ack
counter), exporting bodies for nginx, collecting ETags, medians, and the
chart's input. Standard library only (Debian's python3).

Usage: bench-helper.py COMMAND ARGS...; see each cmd_* function."""
import json
import os
import re
import signal
import socket
import statistics
import sys
import urllib.parse


def ms(text):
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(path):
    """wrk --latency output as a dict: rate, p50/p75/p90/p99 (ms), errors."""
    text = open(path).read()
    out = {"file": os.path.basename(path)}
    m = re.search(r"Requests/sec:\s*([0-9.]+)", text)
    out["rate"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Transfer/sec:\s*([0-9.]+)([KMG]?B)", text)
    if m:
        out["bytes_per_second"] = float(m.group(1)) * {"B": 1, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)]
    for p in ("50", "75", "90", "99"):
        m = re.search(r"^\s+%s%%\s+([0-9.]+(?:us|ms|s|m))" % p, text, re.M)
        out["p" + p] = ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    out["non_2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    out["socket_detail"] = m.group(0) if m else ""
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    return out


def cmd_wrk(*paths):
    """wrk FILE... -> one JSON object per file, one per line."""
    for path in paths:
        print(json.dumps(parse_wrk(path)))


def cmd_wrk_summary(path):
    """wrk-summary FILE -> "p50 x ms, p99 y ms, non-2xx/3xx n, socket errors m"."""
    d = parse_wrk(path)
    fmt = lambda v: "-" if v is None else "%.2f" % v
    print("p50 %s ms, p99 %s ms, non-2xx/3xx %d, socket errors %d"
          % (fmt(d["p50"]), fmt(d["p99"]), d["non_2xx_3xx"], d["socket_errors"]))


def cmd_wrk_field(path, field):
    """wrk-field FILE FIELD -> the value (2 decimals for floats)."""
    v = parse_wrk(path)[field]
    print(f"{v:.2f}" if isinstance(v, float) else v)


def cmd_median(*values):
    print(f"{statistics.median(float(v) for v in values):.2f}")


def cmd_json(path, expr):
    """json FILE EXPR -> eval(EXPR) with d = the file's JSON."""
    d = json.load(open(path))
    print(eval(expr, {"d": d, "round": round, "sum": sum, "max": max, "min": min}))


# --------------------------------------------------------------------------
# NATS: a plain-protocol client, enough for a JetStream API request and for
# counting the acks the service sends.
# --------------------------------------------------------------------------

def nats_connect(url):
    u = urllib.parse.urlparse(url.split(",")[0])
    s = socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=10)
    f = s.makefile("rb")
    f.readline()  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"bench"}\r\n')
    return s, f


def cmd_nats_request(url, subject, payload=""):
    """nats-request URL SUBJECT [PAYLOAD] -> the reply's payload."""
    s, f = nats_connect(url)
    inbox = "_INBOX.bench.%d" % os.getpid()
    body = payload.encode()
    s.sendall(b"SUB %s 1\r\nPUB %s %s %d\r\n%s\r\n" % (inbox.encode(), subject.encode(), inbox.encode(), len(body), body))
    while True:
        line = f.readline()
        if not line:
            sys.exit("nats: connection closed")
        if line.startswith(b"PING"):
            s.sendall(b"PONG\r\n")
        elif line.startswith(b"MSG"):
            n = int(line.split()[-1])
            sys.stdout.write(f.read(n + 2)[:n].decode())
            sys.stdout.write("\n")
            return


def cmd_consumer(url, stream, consumer):
    """consumer URL STREAM CONSUMER -> the consumer info figures that count
    deliveries: delivered (every delivery, redeliveries included), acked,
    redelivered, ack_pending, pending."""
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cmd_nats_request(url, "$JS.API.CONSUMER.INFO.%s.%s" % (stream, consumer))
    d = json.loads(buf.getvalue())
    if "error" in d:
        sys.exit("consumer info: %s" % d["error"])
    print(json.dumps({
        "delivered": d["delivered"]["consumer_seq"],
        "stream_seq": d["delivered"]["stream_seq"],
        "ack_floor": d["ack_floor"]["consumer_seq"],
        "redelivered": d.get("num_redelivered", 0),
        "ack_pending": d.get("num_ack_pending", 0),
        "pending": d.get("num_pending", 0),
    }))


def cmd_watch_acks(url, stream, out):
    """watch-acks URL STREAM OUT.json: subscribes to $JS.ACK.STREAM.> (the
    subject every ack of this stream's consumers is published on) until
    SIGTERM, then writes the counts: terminal acks, acks of a redelivery,
    double acks (a second terminal ack of one delivery or one stream
    sequence), progress acks (+WPI) and naks."""
    s, f = nats_connect(url)
    s.sendall(b"SUB $JS.ACK.%s.> 1\r\nPING\r\n" % stream.encode())

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop()

    acked_deliveries = {}
    acked_sequences = {}
    counts = {"acks": 0, "terms": 0, "acks_of_redeliveries": 0, "double_acks_same_delivery": 0,
              "stream_sequences_acked_twice": 0, "progress": 0, "naks": 0, "unparsed": 0}
    # Blocking reads; SIGTERM raises Stop out of them (PEP 475 retries a
    # read interrupted by a handler that returns, not one that raises).
    signal.signal(signal.SIGTERM, stop)
    s.settimeout(None)
    try:
        while True:
            line = f.readline()
            if not line:
                break
            if line.startswith(b"PONG"):
                open(out + ".ready", "w").close()
                continue
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
                continue
            if not line.startswith(b"MSG"):
                continue
            parts = line.split()
            n = int(parts[-1])
            payload = f.read(n + 2)[:n]
            # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            # (newer servers add a domain and an account hash in front).
            tokens = parts[1].decode().split(".")
            at = 3 if len(tokens) == 9 else 5
            try:
                consumer = tokens[at]
                delivered, sseq, cseq = (int(t) for t in tokens[at + 1:at + 4])
            except (IndexError, ValueError):
                counts["unparsed"] += 1
                continue
            kind = payload.split(b" ")[0]
            if kind in (b"", b"+ACK", b"+TERM"):
                # Both end a delivery: an ack, or a term (a dead letter).
                counts["acks" if kind != b"+TERM" else "terms"] += 1
                if delivered > 1:
                    counts["acks_of_redeliveries"] += 1
                key = (consumer, cseq)
                if key in acked_deliveries:
                    counts["double_acks_same_delivery"] += 1
                acked_deliveries[key] = 1
                key = (consumer, sseq)
                if key in acked_sequences:
                    counts["stream_sequences_acked_twice"] += 1
                acked_sequences[key] = 1
            elif kind == b"+WPI":
                counts["progress"] += 1
            elif kind == b"-NAK":
                counts["naks"] += 1
    except Stop:
        pass
    json.dump(counts, open(out, "w"))


# --------------------------------------------------------------------------
# Bodies and ids
# --------------------------------------------------------------------------

def cmd_export_bodies(directory):
    """export-bodies DIR < NUL-separated uid/body pairs (psql -A -0 -z)."""
    fields = sys.stdin.buffer.read().split(b"\0")
    for uid, body in zip(fields[0::2], fields[1::2]):
        if uid:
            with open(os.path.join(directory, uid.decode()), "wb") as f:
                f.write(body)


def cmd_last_uid(path):
    """last-uid FILE.jsonl -> order_uid of the last line."""
    last = None
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                last = line
    print(json.loads(last)["order_uid"])


def cmd_uids(path):
    """uids FILE.jsonl -> each line's order_uid."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                print(json.loads(line)["order_uid"])


def cmd_etags(base, ids_path, out_lua):
    """etags BASE IDS OUT.lua: GET each id over one keep-alive connection and
    write a wrk script that sends each id's ETag back as If-None-Match; prints
    how many answers carried an ETag (0: the script sends none)."""
    import http.client
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    pairs = []
    for uid in open(ids_path).read().split():
        conn.request("GET", "/orders/" + uid)
        r = conn.getresponse()
        r.read()
        etag = r.getheader("ETag")
        if etag:
            pairs.append((uid, etag))
    with open(out_lua, "w") as f:
        f.write("local ids = {\n")
        for uid, etag in pairs:
            f.write("  {%s, %s},\n" % (json.dumps(uid), json.dumps(etag)))
        f.write("}\n")
        f.write("request = function()\n")
        f.write("  local p = ids[math.random(#ids)]\n")
        f.write('  return wrk.format("GET", "/orders/" .. p[1], {["If-None-Match"] = p[2]})\n')
        f.write("end\n")
    print(len(pairs))


def cmd_lua(ids_path, out_lua, prefix="/orders/"):
    """lua IDS OUT.lua: a wrk script asking for a random id of the list."""
    with open(out_lua, "w") as f:
        f.write("local ids = {\n")
        for uid in open(ids_path).read().split():
            f.write("  %s,\n" % json.dumps(uid))
        f.write("}\nrequest = function()\n")
        f.write('  return wrk.format("GET", %s .. ids[math.random(#ids)])\nend\n' % json.dumps(prefix))


def cmd_metric(name_prefix, path):
    """metric NAME FILE: the sum of every sample whose name (labels included)
    starts with NAME in a Prometheus text file (0 if none)."""
    total = 0.0
    for line in open(path):
        if line.startswith(name_prefix) and not line.startswith("#"):
            total += float(line.split()[-1])
    print(f"{total:.0f}")


def cmd_histogram_quantile(name, q, before, after):
    """histogram-quantile NAME Q BEFORE AFTER: the Q-quantile (ms) of the
    observations a Prometheus histogram NAME (unlabelled) gained between two
    scrapes, the upper bound of the bucket it falls in (as PromQL's
    histogram_quantile, without interpolation: an upper bound); '-' when
    nothing was observed, '>LAST' past the last finite bound."""
    def buckets(path):
        found = {}
        for line in open(path):
            if line.startswith(name + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                found[le] = float(line.split()[-1])
        return found
    b, a = buckets(before), buckets(after)
    bounds = sorted((float(le), le) for le in a if le != "+Inf")
    total = a.get("+Inf", 0) - b.get("+Inf", 0)
    if total <= 0:
        print("-")
        return
    for value, le in bounds:
        if a[le] - b.get(le, 0) >= float(q) * total:
            print(f"{value * 1000:g}")
            return
    print(f">{bounds[-1][0] * 1000:g}" if bounds else "-")


def cmd_chart_json(out, title, throughput_file, latency_title, latency_file):
    """chart-json OUT TITLE THROUGHPUT LATTITLE LATENCY: the chart's input
    from two tab-separated files (label, value, reference 0/1) and (label,
    p50, p75, p90, p99 in ms; '-' where missing)."""
    bars = []
    for line in open(throughput_file):
        label, value, ref = line.rstrip("\n").split("\t")
        bars.append({"label": label, "value": float(value), "reference": ref == "1"})
    series = []
    for line in open(latency_file):
        label, *values = line.rstrip("\n").split("\t")
        series.append({"label": label, "ms": [None if v in ("-", "", "None") else float(v) for v in values]})
    json.dump({"title": title, "throughput": bars,
               "latency": {"title": latency_title, "percentiles": ["p50", "p75", "p90", "p99"], "series": series}},
              open(out, "w"), indent=1)


if __name__ == "__main__":
    command = sys.argv[1].replace("-", "_")
    globals()["cmd_" + command](*sys.argv[2:])
