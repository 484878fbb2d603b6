//! The little of HTTP/1.1 the etcd gateway needs: a POST with a Content-Length body, and
//! answers framed by Content-Length, chunked transfer coding (streams, errors with
//! trailers) or the end of the connection. Generic over `Read`/`BufRead` so the framing
//! is tested against recorded bytes without a socket.

use std::io::{self, BufRead, Read};

/// Bounds so a confused peer cannot make us buffer without end.
const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_BODY: usize = 256 * 1024 * 1024;

/// The bytes of `POST path` with a JSON body. `authority` is `host:port` for `Host:`.
pub fn encode_post(authority: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Grpc-Metadata-Hasleader: true\r\n\r\n",
        body.len()
    )
    .into_bytes();
    // `hasleader` makes etcd fail (rather than hang) a watch or keep-alive on a member
    // that lost its leader, so the client moves on to another member.
    req.extend_from_slice(body);
    req
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The connection may carry another request after this answer's body.
    pub reusable: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One CRLF- (or LF-) terminated line, without the terminator. `Ok(None)` at a clean EOF.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_LINE {
            invalid("HTTP line too long".into())
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            )
        });
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| invalid("HTTP line is not UTF-8".into()))
}

/// Reads the status line and headers. A connection closed before the first byte gives
/// `UnexpectedEof` (the server dropped an idle connection: safe to resend).
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Head> {
    let status_line = read_line(r)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before any answer",
        )
    })?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| invalid(format!("not an HTTP/1.x status line: {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for _ in 0..MAX_HEADERS {
        let line = read_line(r)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers")
        })?;
        if line.is_empty() {
            let framing = if chunked {
                Framing::Chunked
            } else if let Some(n) = length {
                Framing::Length(n)
            } else if status == 204 || status == 304 || (100..200).contains(&status) {
                Framing::Length(0)
            } else {
                Framing::UntilClose
            };
            let reusable = !close && framing != Framing::UntilClose;
            return Ok(Head {
                status,
                framing,
                reusable,
            });
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
            if n > MAX_BODY {
                return Err(invalid(format!("answer of {n} bytes is too large")));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .to_ascii_lowercase()
                .split(',')
                .any(|c| c.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value
                .to_ascii_lowercase()
                .split(',')
                .any(|c| c.trim() == "close");
        }
    }
    Err(invalid("too many HTTP headers".into()))
}

/// The whole body of an answer, framed as `head` says.
pub fn read_body<R: BufRead>(r: &mut R, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        Framing::Chunked => {
            ChunkedReader::new(r)
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)?;
        }
        Framing::UntilClose => {
            r.take(MAX_BODY as u64).read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

/// Decodes the chunked transfer coding as a byte stream: EOF after the last chunk and its
/// trailers; an error if the connection ends before that.
pub struct ChunkedReader<R> {
    inner: R,
    /// Bytes left in the current chunk; `None` before a size line, or after the end.
    left: Option<usize>,
    finished: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    pub fn new(inner: R) -> ChunkedReader<R> {
        ChunkedReader {
            inner,
            left: None,
            finished: false,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn eof_inside() -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a chunked body",
        )
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.finished || out.is_empty() {
                return Ok(0);
            }
            match self.left {
                None => {
                    let line = read_line(&mut self.inner)?.ok_or_else(Self::eof_inside)?;
                    // Chunk extensions (";name=value") are allowed and ignored.
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
                    if size == 0 {
                        // Trailers (etcd sends Grpc-Trailer-*), then an empty line.
                        while !read_line(&mut self.inner)?
                            .ok_or_else(Self::eof_inside)?
                            .is_empty()
                        {}
                        self.finished = true;
                        return Ok(0);
                    }
                    self.left = Some(size);
                }
                Some(0) => {
                    let line = read_line(&mut self.inner)?.ok_or_else(Self::eof_inside)?;
                    if !line.is_empty() {
                        return Err(invalid(format!("missing CRLF after chunk, got {line:?}")));
                    }
                    self.left = None;
                }
                Some(left) => {
                    let want = left.min(out.len());
                    let n = self.inner.read(&mut out[..want])?;
                    if n == 0 {
                        return Err(Self::eof_inside());
                    }
                    self.left = Some(left - n);
                    return Ok(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/etcd/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn request_bytes() {
        let req = encode_post("127.0.0.1:2379", "/v3/kv/put", br#"{"a":1}"#);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"));
        assert!(text.contains("\r\nContent-Length: 7\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn content_length_answer() {
        let raw = fixture("range_content_length_http.txt");
        let mut r = &raw[..];
        let head = read_head(&mut r).unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                framing: Framing::Length(220),
                reusable: true
            }
        );
        let body = read_body(&mut r, &head).unwrap();
        assert!(body.starts_with(b"{\"header\"") && body.ends_with(b"\"count\":\"1\"}"));
        assert!(r.is_empty(), "nothing left over for the next answer");
    }

    #[test]
    fn chunked_answer() {
        let raw = fixture("keepalive_chunked_http.txt");
        let mut r = &raw[..];
        let head = read_head(&mut r).unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let body = read_body(&mut r, &head).unwrap();
        assert!(body.starts_with(b"{\"result\":") && body.ends_with(b"}}\n"));
        assert!(r.is_empty());
    }

    #[test]
    fn chunked_error_with_trailers() {
        let raw = fixture("error_compacted_chunked_http.txt");
        let mut r = &raw[..];
        let head = read_head(&mut r).unwrap();
        assert_eq!(head.status, 400);
        let body = read_body(&mut r, &head).unwrap();
        assert!(String::from_utf8(body).unwrap().contains("compacted"));
        assert!(r.is_empty(), "the trailer was consumed");
    }

    #[test]
    fn chunked_stream_in_tiny_reads() {
        // The watch fixture was cut while streaming: every message decodes, then EOF errors.
        let raw = fixture("watch_stream_chunked.txt");
        let tiny = BufReader::with_capacity(1, &raw[..]);
        let mut lines = Vec::new();
        let mut reader = BufReader::with_capacity(3, ChunkedReader::new(tiny));
        let err = loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => panic!("a cut stream must not end cleanly"),
                Ok(_) => lines.push(line),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(lines.len(), 5);
        assert!(lines
            .iter()
            .all(|l| l.starts_with(b"{\"result\":") && l.ends_with(b"\n")));
    }

    #[test]
    fn eof_before_answer_is_unexpected_eof() {
        let e = read_head(&mut &b""[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(read_head(&mut &b"SSH-2.0-OpenSSH\r\n"[..]).is_err());
        let head = read_head(&mut &b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"[..]).unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                framing: Framing::UntilClose,
                reusable: false
            }
        );
    }
}
