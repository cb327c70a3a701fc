#!/usr/bin/env python3
"""Option (a) of the live path, for measurement only: a node's reader of the
partitioned notification streams, one blocking XREAD ... COUNT over all of them,
from the last ids seen. Standard library only (a minimal RESP2 client).

    reader.py PORT PARTITIONS
"""
import socket
import sys


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def parse(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [parse(f) for _ in range(n)]
    raise ValueError(line)


def main():
    port, parts = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    keys = ["sluice:notify:%d" % p for p in range(parts)]
    # Start from the current end of each stream, then always from the last id seen.
    ids = ["0-0"] * parts
    for i, k in enumerate(keys):
        s.sendall(command("XREVRANGE", k, "+", "-", "COUNT", 1))
        last = parse(f)
        if last:
            ids[i] = last[0][0].decode()
    while True:
        s.sendall(command("XREAD", "COUNT", 1000, "BLOCK", 1000, "STREAMS", *keys, *ids))
        reply = parse(f)
        for key, entries in reply or []:
            i = keys.index(key.decode())
            ids[i] = entries[-1][0].decode()


if __name__ == "__main__":
    main()
