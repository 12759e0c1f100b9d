//! Fetching JWKS and OIDC discovery documents over HTTPS.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

/// The largest document fetched.
pub const MAX_DOCUMENT: usize = 512 * 1024;

/// A fetched document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most [`MAX_DOCUMENT`] bytes).
    pub body: Bytes,
    /// `Cache-Control: max-age`, if the response had one.
    pub max_age: Option<Duration>,
}

/// The future returned by [`HttpFetch::get`].
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, String>> + Send + 'a>>;

/// Fetches a URL. Implemented by [`HttpsFetcher`]; tests substitute their own.
pub trait HttpFetch: Send + Sync + fmt::Debug + 'static {
    /// GETs `url`.
    fn get<'a>(&'a self, url: &'a str) -> FetchFuture<'a>;
}

/// The `max-age` directive of a `Cache-Control` value.
pub(crate) fn max_age(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let mut max_age = None;
    for directive in text.split(',') {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, value)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            max_age = value
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

/// A hyper + rustls client for `https://` URLs (and `http://` only where explicitly allowed).
#[derive(Clone)]
pub struct HttpsFetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    allow_http: bool,
}

impl fmt::Debug for HttpsFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsFetcher")
            .field("timeout", &self.timeout)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl HttpsFetcher {
    /// A fetcher trusting `roots` (see [`webpki_roots()`] and [`roots_from_pem`]), giving up
    /// after `timeout`.
    ///
    /// # Errors
    ///
    /// If rustls cannot be configured.
    pub fn new(roots: RootCertStore, timeout: Duration) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            allow_http: false,
        })
    }

    /// Also fetch plain `http://` URLs. Keys fetched over plain HTTP can be replaced by anyone
    /// on the path: only for tests and local development.
    #[must_use]
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_http = true;
        self
    }

    async fn fetch(&self, url: &str) -> Result<Fetched, String> {
        let uri: Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            _ => return Err("only https:// URLs are fetched".to_owned()),
        }
        let request = Request::get(uri)
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let max_age = response.headers().get(CACHE_CONTROL).and_then(max_age);
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
            .to_bytes();
        Ok(Fetched {
            status,
            body,
            max_age,
        })
    }
}

impl HttpFetch for HttpsFetcher {
    fn get<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.fetch(url))
                .await
                .map_err(|_| format!("timed out after {:?}", self.timeout))?
        })
    }
}

/// The Mozilla root store, as shipped by `webpki-roots`.
pub fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A root store from a PEM bundle of CA certificates.
///
/// # Errors
///
/// If the bundle holds no certificate, or one that is not a usable trust anchor.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the bundle".to_owned());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_max_age() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(max_age(&v("max-age=300")), Some(Duration::from_secs(300)));
        assert_eq!(
            max_age(&v("public, max-age=60, must-revalidate")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(&v("Max-Age = 5")), Some(Duration::from_secs(5)));
        assert_eq!(max_age(&v("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&v("public")), None);
        assert_eq!(max_age(&v("max-age=soon")), None);
    }

    #[test]
    fn root_bundles() {
        let pki = portcullis_test_util::TestPki::generate().unwrap();
        let roots = roots_from_pem(pki.root().cert_pem().as_bytes()).unwrap();
        assert_eq!(roots.len(), 1);
        assert!(roots_from_pem(b"").is_err());
        assert!(
            roots_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(!webpki_roots().is_empty());
    }

    #[tokio::test]
    async fn refuses_plain_http_unless_allowed() {
        let f = HttpsFetcher::new(webpki_roots(), Duration::from_secs(1)).unwrap();
        let err = f.get("http://127.0.0.1:9/jwks").await.unwrap_err();
        assert!(err.contains("https"), "{err}");
        assert!(f.get("not a url").await.is_err());
    }
}
