//! Endpoints: `tcp://host:port`, `rdma://host:port` and `auto://host:port` (the default when
//! no scheme is given). `auto` uses RDMA when an RDMA device reaches the peer, TCP otherwise.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::error::TransportError;

/// How an endpoint asks to be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// TCP only.
    Tcp,
    /// RDMA only.
    Rdma,
    /// RDMA when a device reaches the peer, else TCP.
    Auto,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Rdma => "rdma",
            Scheme::Auto => "auto",
        }
    }
}

/// A peer's address with the transport it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The transport asked for.
    pub scheme: Scheme,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `scheme://host:port` or `host:port` (scheme `auto`). IPv6 hosts go in brackets.
    pub fn parse(text: &str) -> Result<Endpoint, TransportError> {
        let bad = |reason: &str| TransportError::BadEndpoint {
            endpoint: text.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = match text.split_once("://") {
            Some(("tcp", rest)) => (Scheme::Tcp, rest),
            Some(("rdma", rest)) => (Scheme::Rdma, rest),
            Some(("auto", rest)) => (Scheme::Auto, rest),
            Some((other, _)) => {
                return Err(bad(&format!(
                    "unknown scheme '{other}'; expected tcp, rdma or auto"
                )));
            }
            None => (Scheme::Auto, text),
        };
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let (host, tail) = after
                .split_once(']')
                .ok_or_else(|| bad("'[' without ']'"))?;
            let port = tail
                .strip_prefix(':')
                .ok_or_else(|| bad("expected ':port' after ']'"))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| bad("expected host:port"))?
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if host.contains(['/', ' ', '@']) {
            return Err(bad("the host holds '/', ' ' or '@'"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| bad(&format!("port '{port}' is not a number from 0 to 65535")))?;
        Ok(Endpoint {
            scheme,
            host: host.to_string(),
            port,
        })
    }

    /// The first socket address the host resolves to.
    pub fn socket_addr(&self) -> Result<SocketAddr, TransportError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| TransportError::BadEndpoint {
                endpoint: self.to_string(),
                reason: format!("cannot resolve '{}': {e}", self.host),
            })?
            .next()
            .ok_or_else(|| TransportError::BadEndpoint {
                endpoint: self.to_string(),
                reason: format!("'{}' resolves to no address", self.host),
            })
    }

    /// The same endpoint with another scheme.
    pub fn with_scheme(&self, scheme: Scheme) -> Endpoint {
        Endpoint {
            scheme,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Endpoint, TransportError> {
        Endpoint::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, scheme, host, port) in [
            ("tcp://127.0.0.1:7000", Scheme::Tcp, "127.0.0.1", 7000),
            ("rdma://node1:1", Scheme::Rdma, "node1", 1),
            ("auto://[::1]:65535", Scheme::Auto, "::1", 65535),
            ("localhost:80", Scheme::Auto, "localhost", 80),
        ] {
            let e = Endpoint::parse(text).expect(text);
            assert_eq!((e.scheme, e.host.as_str(), e.port), (scheme, host, port));
            assert_eq!(Endpoint::parse(&e.to_string()).expect("reparse"), e);
        }
    }

    #[test]
    fn refuses_with_a_reason() {
        for (text, reason) in [
            ("udp://h:1", "unknown scheme 'udp'"),
            ("tcp://h", "expected host:port"),
            ("tcp://:1", "host is empty"),
            ("tcp://h:99999", "port '99999'"),
            ("tcp://[::1:5", "without ']'"),
            ("tcp://a/b:5", "holds '/'"),
        ] {
            let err = Endpoint::parse(text).expect_err(text);
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
    }
}
