//! A connection pool to the metadata service and the calls made through it.

use std::time::Duration;

use nacre_transport::Endpoint;
use nacre_transport::client::{Bulk, ConnectOptions, Peer};
use nacre_transport::wire::Opcode;

use crate::codec::{CodecError, Reader};
use crate::error::{Error, errno_text};
use crate::meta::proto::MetaRequest;
use crate::meta::types::Cred;

/// Connections to the metadata service.
#[derive(Debug)]
pub struct MetaLink {
    peer: Peer,
}

impl MetaLink {
    /// A pool of up to `connections` connections to the service at `endpoint`.
    pub fn new(endpoint: &str, options: ConnectOptions, connections: usize) -> Result<Self, Error> {
        let parsed = Endpoint::parse(endpoint)?;
        let peer = Peer::new(parsed, options, connections)?;
        Ok(MetaLink { peer })
    }

    /// The service's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.peer.endpoint()
    }

    /// Makes `request` as `cred` and returns the reply's body; an error reply becomes
    /// [`Error::Meta`] with the service's message.
    pub fn call(&self, cred: &Cred, request: &MetaRequest) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        request.encode(cred, &mut body);
        let mut reply_body = Vec::new();
        let reply = self
            .peer
            .with_connection(|c| c.call(Opcode::Meta, &body, Bulk::None, &mut reply_body))
            .map_err(|source| Error::MetaUnreachable {
                endpoint: self.peer.endpoint().to_string(),
                source,
            })?;
        if reply.status != 0 {
            let message = String::from_utf8_lossy(&reply_body).into_owned();
            return Err(Error::Meta {
                op: request.name(),
                path: request.path().to_string(),
                errno: reply.status,
                message: if message.is_empty() {
                    errno_text(reply.status)
                } else {
                    message
                },
            });
        }
        Ok(reply_body)
    }

    /// [`MetaLink::call`], then decodes the reply with `decode`, which must use it all.
    pub fn call_decode<T>(
        &self,
        cred: &Cred,
        request: &MetaRequest,
        decode: impl FnOnce(&mut Reader<'_>) -> Result<T, CodecError>,
    ) -> Result<T, Error> {
        let body = self.call(cred, request)?;
        let mut r = Reader::new(&body, "metadata reply");
        let value = decode(&mut r).and_then(|v| r.finish().map(|()| v));
        value.map_err(|source| Error::Codec {
            from: format!("metadata service at {}", self.peer.endpoint()),
            source,
        })
    }
}

/// Options for a link to the metadata service: connect within `timeout`, and requests too.
pub fn link_options(timeout: Duration) -> ConnectOptions {
    ConnectOptions {
        connect_timeout: timeout,
        request_timeout: timeout,
    }
}
