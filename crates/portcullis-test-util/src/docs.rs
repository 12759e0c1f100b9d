//! A small server of scripted documents, over HTTP or HTTPS: what a JWKS endpoint or an OIDC
//! provider's discovery endpoint looks like to a client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::pki::TestCert;

#[derive(Debug, Clone)]
struct Doc {
    status: StatusCode,
    body: Bytes,
    max_age: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    docs: Mutex<HashMap<String, Doc>>,
    hits: AtomicU64,
}

/// A running document server. Stops when dropped.
#[derive(Debug)]
pub struct DocumentServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl DocumentServer {
    /// Starts on `127.0.0.1:0`; over TLS with `cert` (e.g. [`TestPki::server`]) when given.
    ///
    /// [`TestPki::server`]: crate::TestPki::server
    ///
    /// # Errors
    ///
    /// If the port cannot be bound or the certificate is unusable.
    pub async fn start(cert: Option<&TestCert>) -> Result<Self, Error> {
        let acceptor = match cert {
            None => None,
            Some(cert) => {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let mut config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(cert.chain().to_vec(), cert.key_der())?;
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(TlsAcceptor::from(Arc::new(config)))
            }
        };
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let tls = acceptor.is_some();
        let serve_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = &mut stop => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&serve_state);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(respond(&state, &req)) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        Ok(Self {
            addr,
            tls,
            state,
            shutdown: Some(shutdown),
        })
    }

    /// `https://localhost:PORT/path` (or `http://127.0.0.1:PORT/path` without TLS).
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    /// Serves `body` with 200 at `path`, with `Cache-Control: max-age` when given.
    pub fn serve(&self, path: &str, body: impl Into<Bytes>, max_age: Option<u64>) {
        self.set(path, StatusCode::OK, body.into(), max_age);
    }

    /// Answers `status` with an empty body at `path`.
    pub fn fail(&self, path: &str, status: StatusCode) {
        self.set(path, status, Bytes::new(), None);
    }

    fn set(&self, path: &str, status: StatusCode, body: Bytes, max_age: Option<u64>) {
        if let Ok(mut docs) = self.state.docs.lock() {
            docs.insert(
                path.to_owned(),
                Doc {
                    status,
                    body,
                    max_age,
                },
            );
        }
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl Drop for DocumentServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let doc = state
        .docs
        .lock()
        .ok()
        .and_then(|d| d.get(req.uri().path()).cloned())
        .unwrap_or(Doc {
            status: StatusCode::NOT_FOUND,
            body: Bytes::new(),
            max_age: None,
        });
    let mut response = Response::new(Full::new(doc.body));
    *response.status_mut() = doc.status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(age) = doc.max_age
        && let Ok(v) = header::HeaderValue::from_str(&format!("public, max-age={age}"))
    {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}
