#!/usr/bin/env python3
"""Hold N idle keep-alive connections open on one proxy (bench/gateway/run.sh --idle N).

    idle_connections.py HOST PORT N [--tls SNI] [--h2]

Opens N connections one after another; on each it sends one `GET /` (HTTP/1.1, keep-alive; Host
as the load cells send it; with --h2, one HTTP/2 stream over TLS with ALPN `h2`, through the `h2`
package) and reads the whole answer (Content-Length or chunked; HTTP/2: to the stream's end), so
every connection has served a request and sits idle in the proxy's keep-alive wait. Then prints
`ready N` and holds them until its standard input closes. Exits 1 (naming the connection) if an
answer is not 200 or the proxy did not choose `h2`.
"""
import argparse
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


def h2_answer(sock, authority):
    """One GET / on stream 1 of a new HTTP/2 connection; returns the answer's status once the
    stream has ended (settings and flow control acknowledged as the `h2` package does)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", authority)],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    status = None
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the stream's end")
        ended = False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                raise ConnectionError(f"stream reset ({event.error_code})")
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        if ended:
            return status


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("host")
    args.add_argument("port", type=int)
    args.add_argument("n", type=int)
    args.add_argument("--tls", metavar="SNI")
    args.add_argument("--h2", action="store_true", help="HTTP/2 over TLS (needs --tls)")
    args = args.parse_args()
    host, port, n, sni = args.host, args.port, args.n, args.tls
    if args.h2 and not sni:
        sys.exit("--h2 needs --tls")
    ctx = None
    if sni:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if args.h2:
            ctx.set_alpn_protocols(["h2"])
    # The Host the load cells send: wrk's authority for plain HTTP (no TLS redirect), the SNI name
    # over TLS.
    authority = sni or f"{host}:{port}"
    held = []
    for i in range(n):
        sock = socket.create_connection((host, port))
        if ctx:
            sock = ctx.wrap_socket(sock, server_hostname=sni)
        if args.h2:
            if sock.selected_alpn_protocol() != "h2":
                print(f"connection {i}: ALPN {sock.selected_alpn_protocol()!r}, not h2", file=sys.stderr)
                sys.exit(1)
            status = h2_answer(sock, authority)
        else:
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
