//! The I/O edge: endpoints, TCP connections with timeouts, and TLS (rustls with the ring
//! provider) for `https://` endpoints.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::StoreError;

/// One etcd client URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured, for messages.
    pub url: String,
    pub tls: bool,
    /// Host name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `http://host:port` or `https://host:port` (IPv6 as `[addr]:port`); port 2379 if left out.
    pub fn parse(url: &str) -> Result<Endpoint, StoreError> {
        let bad = |why: &str| {
            StoreError::Config(format!(
                "etcd endpoint {url:?}: {why} (want http://host:port or https://host:port)"
            ))
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(bad("unknown scheme"));
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.contains('@') {
            return Err(bad("a path or user name is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => 2379,
        };
        Ok(Endpoint {
            url: url.to_string(),
            tls,
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` for the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A connection to one endpoint, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Connects within `timeout` (each resolved address in turn); reads and writes then time
/// out after `timeout` too.
pub fn connect(
    ep: &Endpoint,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> io::Result<Stream> {
    let addrs = (ep.host.as_str(), ep.port).to_socket_addrs()?;
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} resolves to no address", ep.host),
    );
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                tcp.set_read_timeout(Some(timeout))?;
                tcp.set_write_timeout(Some(timeout))?;
                set_keepalive(&tcp);
                return wrap(ep, tls, tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn wrap(ep: &Endpoint, tls: Option<&Arc<ClientConfig>>, tcp: TcpStream) -> io::Result<Stream> {
    if !ep.tls {
        return Ok(Stream::Plain(tcp));
    }
    let config = tls.ok_or_else(|| io::Error::other("https endpoint without TLS configuration"))?;
    let name = ServerName::try_from(ep.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", ep.host)))?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    // Handshake now, so certificate problems show up as connection errors.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Stream::Tls(Box::new(stream)))
}

/// An exchange's error as an operator reads it. A read or write past the socket's
/// timeout comes back as EAGAIN ("Resource temporarily unavailable (os error 11)", from
/// SO_RCVTIMEO), which names neither the cause nor the fix.
/// Whether a read or write gave up waiting (a socket timeout).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub fn describe(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "no answer within {:.1} s (the client's timeout): the member is overloaded or unreachable",
            timeout.as_secs_f64()
        ),
        _ => e.to_string(),
    }
}

/// Whether a connection failed in TLS itself (certificate refused, bad handshake),
/// rather than in reaching the server.
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// TCP keep-alive so a watch on a vanished host (no FIN, no RST) breaks within ~30 s
/// instead of waiting forever. Best effort: a failure only loses that early warning.
fn set_keepalive(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let set = |level, name, value: libc::c_int| unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 15);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

/// The rustls client configuration: trust `ca_file` only, and present the client
/// certificate if both `cert_file` and `key_file` are given.
pub fn tls_config(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, StoreError> {
    let ca_file = ca_file.ok_or_else(|| {
        StoreError::Config("an https:// etcd endpoint needs ca_file (the CA that signed the etcd server certificate)".into())
    })?;
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| {
        StoreError::Config(format!("cannot read PEM {}: {e}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| pem_err(ca_file, e))? {
        roots
            .add(cert.map_err(|e| pem_err(ca_file, e))?)
            .map_err(|e| {
                StoreError::Config(format!("CA certificate in {}: {e}", ca_file.display()))
            })?;
        count += 1;
    }
    if count == 0 {
        return Err(StoreError::Config(format!(
            "{} holds no PEM certificate",
            ca_file.display()
        )));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots);
    let config = match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_err(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_err(cert, e))?;
            if chain.is_empty() {
                return Err(StoreError::Config(format!(
                    "{} holds no PEM certificate",
                    cert.display()
                )));
            }
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                StoreError::Config(format!(
                    "client certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(StoreError::Config(
                "give both cert_file and key_file for a client certificate, or neither".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let ep = Endpoint::parse("http://127.0.0.1:2379").unwrap();
        assert_eq!(
            (ep.tls, ep.host.as_str(), ep.port),
            (false, "127.0.0.1", 2379)
        );
        let ep = Endpoint::parse("https://etcd-0.example:4001/").unwrap();
        assert_eq!(
            (ep.tls, ep.host.as_str(), ep.port),
            (true, "etcd-0.example", 4001)
        );
        assert_eq!(ep.authority(), "etcd-0.example:4001");
        let ep = Endpoint::parse("http://[::1]:23").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.authority()),
            ("::1", 23, "[::1]:23".to_string())
        );
        assert_eq!(Endpoint::parse("http://etcd").unwrap().port, 2379);
        for bad in [
            "127.0.0.1:2379",
            "unix:///x",
            "http://",
            "http://h:99999",
            "http://h:1/v3",
            "http://[::1",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(StoreError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tls_config_names_missing_files() {
        let e = tls_config(None, None, None).unwrap_err().to_string();
        assert!(e.contains("ca_file"), "{e}");
        let e = tls_config(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
