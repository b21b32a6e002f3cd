//! The fast path's pure core: which HTTP/1.1 requests it may serve, the upstream request head it
//! writes for them, how an upstream response is framed, and the downstream response head. No I/O.
//!
//! ```text
//!  client bytes ─► parse_request ─► Parsed::Request (owned ranges, framing, header edits)
//!                                 ├► Parsed::Partial (read more)
//!                                 └► Parsed::HandOver(reason) ─► Pingora's ProxyHttp path
//!  upstream bytes ► parse_response ► ResponseHead (framing, reuse) + downstream head bytes
//!  chunked body ──► ChunkedTracker (finds the end of a chunked body; bytes pass unchanged)
//! ```
//!
//! The rules are Pingora's and the proxy's (`crate::proxy`) restated for the common case; anything
//! outside it is handed over rather than re-implemented: `Transfer-Encoding` (chunked bodies and
//! the smuggling shapes RFC 9112 §6.1 and §6.3 describe), duplicate or malformed
//! `Content-Length`, `Upgrade`, `Expect`, `CONNECT`, HTTP/1.0, absolute-form targets, a
//! `Connection` that nominates other fields (RFC 9110 §7.6.1), a missing or repeated `Host`,
//! anything `httparse` refuses, and more than [`MAX_HEADERS`] fields or [`MAX_HEAD`] bytes.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Request and response header fields the fast path parses at most; more → handed over
/// (Pingora allows 256).
pub const MAX_HEADERS: usize = 96;

/// Largest request or response head (bytes) the fast path buffers; a longer request head is
/// handed over to Pingora (which allows up to 1 MiB), a longer response head answers 502.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a request goes to Pingora's `ProxyHttp` path instead (for debug logs and tests).
pub type HandOverReason = &'static str;

/// A request head the fast path serves, as byte ranges into the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Length of the head including the blank line (bytes); the body starts here.
    pub head_len: usize,
    /// The method token.
    pub method: Range<usize>,
    /// The origin-form target (path and query).
    pub target: Range<usize>,
    /// The path (target up to `?`).
    pub path: Range<usize>,
    /// The `Host` field value.
    pub host: Range<usize>,
    /// `Content-Length` (0 when absent). Bytes of body that follow the head.
    pub content_length: u64,
    /// `HEAD` request: the response has no body whatever its fields say (RFC 9112 §6.3 rule 1).
    pub is_head: bool,
    /// The client sent `Connection: close`: answer, then close.
    pub close: bool,
    /// The client's `X-Request-ID` value, if any (kept; else one is generated).
    pub request_id: Option<Range<usize>>,
    /// The client's `X-Forwarded-For` value, if any (the client address is appended).
    pub forwarded_for: Option<Range<usize>>,
}

/// Header fields copied unchanged upstream: (name, value) ranges into the request buffer, in
/// order. Kept per connection and reused, so parsing does not allocate once warm.
pub type Copied = Vec<(Range<usize>, Range<usize>)>;

/// The result of parsing the start of a client's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request head the fast path serves.
    Request(Request),
    /// Not a complete head yet.
    Partial,
    /// A request for Pingora's path.
    HandOver(HandOverReason),
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Digits only (RFC 9110 §8.6: `Content-Length = 1*DIGIT`), at most 19 of them.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// Parses a request head at the start of `buf` and decides whether the fast path serves it.
///
/// `copied` is cleared and filled with the fields to forward unchanged (see [`Copied`]).
pub fn parse_request(buf: &[u8], copied: &mut Copied) -> Parsed {
    // Uninitialised: filling 96 empty fields first cost more instructions than parsing a small
    // head (callgrind, bench/gateway, 2026-12-08 (b)).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parsed::HandOver("request head larger than the fast path's buffer");
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::HandOver("many header fields"),
        Err(_) => return Parsed::HandOver("httparse refused the request head"),
    };
    if req.version != Some(1) {
        return Parsed::HandOver("not HTTP/1.1");
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::HandOver("no request line");
    };
    if method == "CONNECT" {
        return Parsed::HandOver("CONNECT");
    }
    if !target.starts_with('/') {
        return Parsed::HandOver("target not in origin-form");
    }
    let mut out = Request {
        head_len,
        method: range_of(buf, method.as_bytes()),
        target: range_of(buf, target.as_bytes()),
        path: range_of(
            buf,
            target.split_once('?').map_or(target, |(p, _)| p).as_bytes(),
        ),
        host: 0..0,
        content_length: 0,
        is_head: method == "HEAD",
        close: false,
        request_id: None,
        forwarded_for: None,
    };
    copied.clear();
    // At most one entry per field: one allocation when the connection's vector was released.
    copied.reserve(req.headers.len());
    let (mut hosts, mut lengths) = (0, 0);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            4 if is("host") => {
                hosts += 1;
                if std::str::from_utf8(value).is_err() {
                    return Parsed::HandOver("Host is not UTF-8");
                }
                out.host = range_of(buf, value);
                copied.push((range_of(buf, name), out.host.clone()));
            }
            14 if is("content-length") => {
                lengths += 1;
                let Some(n) = parse_decimal(trim(value)) else {
                    return Parsed::HandOver("malformed Content-Length");
                };
                out.content_length = n;
                copied.push((range_of(buf, name), range_of(buf, value)));
            }
            10 if is("connection") => {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        out.close = true;
                    } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                        return Parsed::HandOver("Connection nominates other fields");
                    }
                }
            }
            // Framing and protocol changes are Pingora's (RFC 9112 §6.1, §7.8; RFC 9110 §10.1.1).
            17 if is("transfer-encoding") => return Parsed::HandOver("Transfer-Encoding"),
            7 if is("upgrade") => return Parsed::HandOver("Upgrade"),
            6 if is("expect") => return Parsed::HandOver("Expect"),
            14 if is("http2-settings") => return Parsed::HandOver("HTTP2-Settings"),
            // Hop-by-hop (RFC 9110 §7.6.1), dropped as Pingora's upstream request policy does.
            10 if is("keep-alive") => {}
            16 if is("proxy-connection") => {}
            2 if is("te") => {}
            7 if is("trailer") => {}
            // Overwritten by this hop (crate::proxy's upstream_request_filter).
            17 if is("x-forwarded-proto") => {}
            16 if is("x-forwarded-host") || is("x-forwarded-port") => {}
            9 if is("x-real-ip") => {}
            15 if is("x-forwarded-for") => {
                if out.forwarded_for.is_some() {
                    return Parsed::HandOver("repeated X-Forwarded-For");
                }
                out.forwarded_for = Some(range_of(buf, value));
            }
            12 if is("x-request-id") => {
                out.request_id = Some(range_of(buf, value));
                copied.push((range_of(buf, name), range_of(buf, value)));
            }
            _ => copied.push((range_of(buf, name), range_of(buf, value))),
        }
    }
    if hosts != 1 {
        return Parsed::HandOver("missing or repeated Host");
    }
    if lengths > 1 {
        return Parsed::HandOver("repeated Content-Length");
    }
    Parsed::Request(out)
}

/// What this hop adds to the upstream request (crate::proxy's `upstream_request_filter`).
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address as text (`X-Forwarded-For` += it, `X-Real-IP` = it).
    pub client_ip: Option<&'a str>,
    /// `X-Forwarded-Proto`: `https` on the TLS listener, else `http`.
    pub tls: bool,
    /// `X-Forwarded-Port`: the listener's port as text.
    pub server_port: Option<&'a str>,
    /// The generated `X-Request-ID` (32 hex digits), used when the client sent none.
    pub request_id: &'a [u8; 32],
}

/// Writes the upstream request head for `req` (parsed from `buf`) into `out` (cleared first):
/// the request line as HTTP/1.1, the copied fields as received (name case kept), then
/// `x-forwarded-for`, `x-real-ip`, `x-forwarded-proto`, `x-forwarded-host`, `x-forwarded-port`
/// and, when the client sent none, `x-request-id`.
pub fn write_upstream_head(
    buf: &[u8],
    req: &Request,
    copied: &Copied,
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&buf[req.method.clone()]);
    out.push(b' ');
    out.extend_from_slice(&buf[req.target.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in copied {
        out.extend_from_slice(&buf[name.clone()]);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[value.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    let forwarded_for = req.forwarded_for.clone().map(|r| trim(&buf[r]));
    write_forwarding(
        fwd,
        forwarded_for,
        &buf[req.host.clone()],
        req.request_id.is_some(),
        out,
    );
}

/// Appends this hop's fields and the end of the head to `out` (both protocols' upstream heads):
/// `x-forwarded-for` (`forwarded_for`, the client's value, then the client address),
/// `x-real-ip`, `x-forwarded-proto`, `x-forwarded-host` (`host`, when not empty),
/// `x-forwarded-port`, `x-request-id` unless the client sent one, then the empty line.
pub fn write_forwarding(
    fwd: &Forwarding<'_>,
    forwarded_for: Option<&[u8]>,
    host: &[u8],
    has_request_id: bool,
    out: &mut Vec<u8>,
) {
    if let Some(ip) = fwd.client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = forwarded_for.filter(|p| !p.is_empty()) {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\nx-real-ip: ");
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if fwd.tls {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    if !host.is_empty() {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(port) = fwd.server_port {
        out.extend_from_slice(b"x-forwarded-port: ");
        out.extend_from_slice(port.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_request_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(fwd.request_id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How an upstream response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: a `HEAD` answer, 1xx, 204, 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding` whose final coding is `chunked`: forwarded unchanged.
    Chunked,
    /// Until the upstream closes. Forwarded re-chunked to the client (when `rechunk`), else
    /// unchanged with the client connection closed afterwards (a non-chunked transfer coding).
    UntilClose {
        /// Re-frame as `chunked` for the client (no `Transfer-Encoding` was received).
        rechunk: bool,
    },
}

/// A parsed upstream response head and the downstream head to send for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Length of the upstream head (bytes).
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// How the body ends.
    pub framing: BodyFraming,
    /// The upstream connection may be pooled once the body is read: HTTP/1.1, no
    /// `Connection: close`, and the body ends by its framing.
    pub reusable: bool,
}

/// An upstream response the fast path cannot forward (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Parses an upstream response head at the start of `buf`. `Ok(None)`: incomplete. On success
/// writes the downstream head into `out` (cleared first): status line as HTTP/1.1 with the
/// upstream's reason phrase; every field except `Connection`, the fields it nominates,
/// `Keep-Alive` and `Proxy-Connection` (RFC 9110 §7.6.1, as crate::proxy's
/// `upstream_response_filter`); `transfer-encoding: chunked` when the body is re-chunked;
/// `connection: close` when `close_client`.
pub fn parse_response(
    buf: &[u8],
    is_head: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, BadResponse> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(BadResponse("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse("no status line"));
    };
    let mut reusable = version == 1;
    let (mut length, mut chunked, mut coded) = (None::<u64>, false, false);
    // Fields nominated by `Connection`, as (start, end) of their names in `buf`.
    let mut nominated: [Range<usize>; 8] = Default::default();
    let mut n_nominated = 0;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") || token.is_empty() {
                } else if n_nominated < nominated.len() {
                    nominated[n_nominated] = range_of(buf, token);
                    n_nominated += 1;
                } else {
                    return Err(BadResponse("Connection nominates too many fields"));
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
            let last = h.value.rsplit(|&b| b == b',').next().map_or(&[][..], trim);
            chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(trim(h.value)).ok_or(BadResponse("malformed Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse("differing Content-Lengths"));
            }
            length = Some(n);
        }
    }
    let framing = if is_head || status < 200 || status == 204 || status == 304 {
        BodyFraming::Empty
    } else if coded {
        // RFC 9112 §6.3 rule 3: Transfer-Encoding overrides Content-Length; such a response
        // "ought to be handled as an error" for reuse, so the connection is not pooled.
        if length.is_some() {
            reusable = false;
        }
        if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose { rechunk: false }
        }
    } else if let Some(n) = length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::UntilClose { rechunk: true }
    };
    if matches!(framing, BodyFraming::UntilClose { .. }) {
        reusable = false;
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [b'0'; 3];
    code[0] += (status / 100 % 10) as u8;
    code[1] += (status / 10 % 10) as u8;
    code[2] += (status % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let hop = name.eq_ignore_ascii_case(b"connection")
            || name.eq_ignore_ascii_case(b"keep-alive")
            || name.eq_ignore_ascii_case(b"proxy-connection")
            || nominated[..n_nominated]
                .iter()
                .any(|r| buf[r.clone()].eq_ignore_ascii_case(name));
        if !hop {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    if framing == (BodyFraming::UntilClose { rechunk: true }) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close_client || framing == (BodyFraming::UntilClose { rechunk: false }) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        framing,
        reusable,
    }))
}

/// Where a chunked body (RFC 9112 §7.1) is, fed its bytes in any pieces; finds its end without
/// changing or buffering it, and counts the payload (chunk data) bytes.
#[derive(Debug, Clone, Default)]
pub struct ChunkedTracker {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Payload bytes seen so far (the sum of chunk sizes).
    pub payload: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// After the size: extensions up to the line end.
    Extension,
    /// Expecting LF of the size line.
    SizeLf,
    /// Inside chunk data (`size` bytes left).
    Data,
    /// Expecting CR (or LF) after the data.
    DataCr,
    /// Expecting LF after the data.
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Expecting LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// A chunked body that does not follow RFC 9112 §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

impl ChunkedTracker {
    /// Feeds the next bytes; returns how many belong to the body (fewer than `data.len()` only
    /// when the body ended inside `data`).
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        self.feed_with(data, |_| {})
    }

    /// [`feed`](Self::feed), also handing each run of chunk data (payload) in `data` to
    /// `payload` as a range of `data`, in order (HTTP/2 downstreams get the payload unframed).
    pub fn feed_with(
        &mut self,
        data: &[u8],
        mut payload: impl FnMut(Range<usize>),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    payload(i..i + take);
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err(BadChunk);
                        }
                        self.digits += 1;
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                    }
                    _ if self.digits == 0 => return Err(BadChunk),
                    b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => return Err(BadChunk),
                },
                ChunkState::Extension => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.end_size_line();
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(BadChunk),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => self.state = ChunkState::Done,
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => self.state = ChunkState::TrailerStart,
                    _ => {}
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = ChunkState::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn end_size_line(&mut self) {
        self.payload += self.size;
        self.digits = 0;
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }

    /// Whether the whole body (last chunk, trailers, final CRLF) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Parsed {
        parse_request(raw.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn simple_get_is_served_with_its_fields() {
        let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: app.test:8080\r\nUser-Agent: t\r\nX-Forwarded-For: 192.0.2.1\r\nX-Real-IP: 1.2.3.4\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Proto: gopher\r\nConnection: keep-alive\r\n\r\nGET";
        let mut copied = Vec::new();
        let Parsed::Request(r) = parse_request(raw.as_bytes(), &mut copied) else {
            panic!("not served: {:?}", req(raw))
        };
        let b = raw.as_bytes();
        assert_eq!(&b[r.path.clone()], b"/a/b");
        assert_eq!(&b[r.target.clone()], b"/a/b?x=1");
        assert_eq!(&b[r.host.clone()], b"app.test:8080");
        assert_eq!(r.head_len, raw.len() - 3);
        assert!(!r.close && !r.is_head);
        let mut out = Vec::new();
        let id = [b'a'; 32];
        let fwd = Forwarding {
            client_ip: Some("198.51.100.7"),
            tls: true,
            server_port: Some("8443"),
            request_id: &id,
        };
        write_upstream_head(b, &r, &copied, &fwd, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "GET /a/b?x=1 HTTP/1.1\r\nHost: app.test:8080\r\nUser-Agent: t\r\n\
                 x-forwarded-for: 192.0.2.1, 198.51.100.7\r\nx-real-ip: 198.51.100.7\r\n\
                 x-forwarded-proto: https\r\nx-forwarded-host: app.test:8080\r\n\
                 x-forwarded-port: 8443\r\nx-request-id: {}\r\n\r\n",
                "a".repeat(32)
            )
        );
    }

    #[test]
    fn client_request_id_is_kept() {
        let raw = "POST / HTTP/1.1\r\nhost: h\r\nx-request-id: abc\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
        let mut copied = Vec::new();
        let Parsed::Request(r) = parse_request(raw.as_bytes(), &mut copied) else {
            panic!()
        };
        assert_eq!(r.content_length, 5);
        assert!(r.close);
        let mut out = Vec::new();
        let fwd = Forwarding {
            client_ip: None,
            tls: false,
            server_port: None,
            request_id: &[b'0'; 32],
        };
        write_upstream_head(raw.as_bytes(), &r, &copied, &fwd, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("x-request-id: abc\r\n"), "{s}");
        assert_eq!(s.matches("x-request-id").count(), 1, "{s}");
        assert!(!s.contains("connection"), "hop-by-hop dropped: {s}");
    }

    #[test]
    fn unusual_requests_are_handed_over() {
        for (raw, why) in [
            ("GET / HTTP/1.0\r\nHost: h\r\n\r\n", "HTTP/1.0"),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                "chunked",
            ),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                "2 CL",
            ),
            (
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
                "bad CL",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                "ws",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\n\r\n",
                "nominates",
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "2 hosts"),
            ("GET / HTTP/1.1\r\n\r\n", "no host"),
            ("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", "absolute form"),
            ("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", "connect"),
            (
                "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                "expect",
            ),
            ("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", "obs-fold"),
            ("GET / HTTP/1.1\r\nHo st: h\r\n\r\n", "bad name"),
        ] {
            assert!(
                matches!(req(raw), Parsed::HandOver(_)),
                "{why}: {:?}",
                req(raw)
            );
        }
    }

    #[test]
    fn partial_heads_wait_and_huge_ones_are_handed_over() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: h\r\n"), Parsed::Partial);
        assert_eq!(req("GE"), Parsed::Partial);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}",
            "a".repeat(MAX_HEAD)
        );
        assert!(matches!(req(&big), Parsed::HandOver(_)));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
        assert!(matches!(req(&many), Parsed::HandOver(_)));
    }

    fn resp(raw: &str, is_head: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let head = parse_response(raw.as_bytes(), is_head, false, &mut out)
            .unwrap()
            .unwrap();
        (head, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing() {
        let (h, out) = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert!(h.reusable);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        let (h, _) = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(h.framing, BodyFraming::Empty);
        let (h, _) = resp("HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!(h.framing, BodyFraming::Empty);
        assert!(h.reusable);
        let (h, _) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.reusable);
        let (h, _) = resp(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(!h.reusable, "TE + CL: not pooled");
        let (h, out) = resp("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false);
        assert_eq!(h.framing, BodyFraming::UntilClose { rechunk: true });
        assert!(!h.reusable);
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        let (h, out) = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!(h.framing, BodyFraming::UntilClose { rechunk: false });
        assert!(out.contains("connection: close\r\n"), "{out}");
        let (h, _) = resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!h.reusable, "HTTP/1.0 upstream");
        let (h, _) = resp(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.reusable);
        let mut out = Vec::new();
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                &mut out
            )
            .is_err()
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false, false, &mut out),
            Ok(None)
        );
    }

    #[test]
    fn response_hop_by_hop_fields_are_removed() {
        let (_, out) = resp(
            "HTTP/1.1 200 OK\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: a\r\nX-End: 1\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-End: 1\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        parse_response(
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            false,
            true,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn chunked_tracker_finds_the_end_in_any_split() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            for step in [1, 2, 3, 7, 100] {
                let mut t = ChunkedTracker::default();
                let mut consumed = 0;
                let mut pos = 0;
                let mut first = true;
                let mut payload = Vec::new();
                while pos < body.len() && !t.is_done() {
                    let n = if first { split.max(1) } else { step };
                    first = false;
                    let piece = &body[pos..(pos + n).min(body.len())];
                    let used = t
                        .feed_with(piece, |r| payload.extend_from_slice(&piece[r]))
                        .unwrap();
                    consumed += used;
                    pos += piece.len();
                    if used < piece.len() {
                        break;
                    }
                }
                assert!(t.is_done(), "split {split} step {step}");
                assert_eq!(consumed, end, "split {split} step {step}");
                assert_eq!(t.payload, 5 + 26);
                assert_eq!(
                    payload, b"helloabcdefghijklmnopqrstuvwxyz",
                    "split {split} step {step}"
                );
            }
        }
    }

    #[test]
    fn chunked_tracker_refuses_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\n\rX",
        ] {
            let mut t = ChunkedTracker::default();
            assert_eq!(
                t.feed(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut t = ChunkedTracker::default();
        assert_eq!(t.feed(b"0\r\n\r\n"), Ok(5));
        assert!(t.is_done());
    }
}
