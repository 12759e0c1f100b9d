//! Accepting TLS connections and carrying what the handshake established into every request.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Extensions, Request};
use portcullis_core::{PeerCertificate, TlsInfo, TlsVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tower::Service;

use crate::reload::ReloadingTls;
use crate::x509::peer_certificate;

/// What a TLS handshake established about a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    tls: TlsInfo,
    peer: Option<PeerCertificate>,
}

impl ConnectionInfo {
    /// The session parameters.
    pub fn tls(&self) -> &TlsInfo {
        &self.tls
    }

    /// The verified client certificate, if the client sent one.
    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        self.peer.as_ref()
    }

    /// Inserts [`TlsInfo`] and [`PeerCertificate`] (when present) into `extensions`.
    pub fn insert_into(&self, extensions: &mut Extensions) {
        extensions.insert(self.tls.clone());
        if let Some(peer) = &self.peer {
            extensions.insert(peer.clone());
        }
    }

    /// Reads the facts of an established server connection.
    ///
    /// # Errors
    ///
    /// If the session has no negotiated version or suite (it is not established), or the
    /// client certificate cannot be recorded.
    pub fn from_connection(conn: &rustls::ServerConnection) -> io::Result<Self> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
            Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            _ => return Err(invalid("no TLS version negotiated")),
        };
        let suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .ok_or_else(|| invalid("no cipher suite negotiated"))?;
        let mut tls = TlsInfo::new(version, suite);
        if let Some(sni) = conn.server_name() {
            tls = tls.with_sni(sni).map_err(|e| invalid(&e.to_string()))?;
        }
        if let Some(alpn) = conn.alpn_protocol() {
            tls = tls.with_alpn(alpn);
        }
        let peer = match conn.peer_certificates().and_then(<[_]>::first) {
            Some(leaf) => Some(peer_certificate(leaf).map_err(|e| invalid(&e.to_string()))?),
            None => None,
        };
        Ok(Self { tls, peer })
    }
}

/// How long a client has to complete the TLS handshake unless configured otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS connections with the configuration in force for the client's SNI.
#[derive(Debug, Clone)]
pub struct ZtlsAcceptor {
    tls: Arc<ReloadingTls>,
    handshake_timeout: Duration,
}

impl ZtlsAcceptor {
    /// An acceptor using `tls`, giving clients [`DEFAULT_HANDSHAKE_TIMEOUT`] to complete the
    /// handshake (a client that stalls mid-handshake would otherwise hold its connection open
    /// for ever).
    pub fn new(tls: Arc<ReloadingTls>) -> Self {
        Self {
            tls,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Sets the handshake timeout.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Performs the handshake on `stream`.
    ///
    /// # Errors
    ///
    /// If the handshake fails (including a client certificate that does not verify) or does
    /// not finish within the handshake timeout (`TimedOut`).
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<(TlsStream<IO>, ConnectionInfo)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = async {
            let start =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let config = self.tls.config_for(start.client_hello().server_name());
            let stream = start.into_stream(config).await?;
            let info = ConnectionInfo::from_connection(stream.get_ref().1)?;
            Ok((stream, info))
        };
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// Wraps a per-connection service so every request carries the connection's [`ConnectionInfo`].
///
/// With hyper, wrap it once more in `hyper_util::service::TowerToHyperService`.
#[derive(Debug, Clone)]
pub struct WithConnectionInfo<S> {
    inner: S,
    info: ConnectionInfo,
}

impl<S> WithConnectionInfo<S> {
    /// Wraps `inner` for a connection described by `info`.
    pub fn new(inner: S, info: ConnectionInfo) -> Self {
        Self { inner, info }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for WithConnectionInfo<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.info.insert_into(request.extensions_mut());
        self.inner.call(request)
    }
}
