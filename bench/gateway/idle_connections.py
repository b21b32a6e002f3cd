#!/usr/bin/env python3
"""Hold N idle keep-alive connections open on one proxy (bench/gateway/run.sh --idle N).

    idle_connections.py HOST PORT N [--tls SNI]

Opens N connections one after another; on each it sends one `GET /` (HTTP/1.1, keep-alive; Host
as the load cells send it) and reads the whole answer (Content-Length or chunked), so every
connection has served a request and sits idle in the proxy's keep-alive wait. Then prints `ready N` and holds them until its
standard input closes. Exits 1 (naming the connection) if an answer is not 200.
"""
import socket
import ssl
import sys


def read_answer(sock, buf=b""):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        need = int(headers["content-length"])
        while len(body) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            body += chunk
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            body += chunk
    return status


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sni = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--tls" else None
    ctx = None
    if sni:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    # The Host the load cells send: wrk's authority for plain HTTP (no TLS redirect), the SNI name
    # over TLS.
    authority = sni or f"{host}:{port}"
    held = []
    for i in range(n):
        sock = socket.create_connection((host, port))
        if ctx:
            sock = ctx.wrap_socket(sock, server_hostname=sni)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        status = read_answer(sock)
        if status != 200:
            print(f"connection {i}: status {status}", file=sys.stderr)
            sys.exit(1)
        held.append(sock)
    print(f"ready {len(held)}", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
