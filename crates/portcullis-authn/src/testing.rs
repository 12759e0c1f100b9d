//! Shared test helpers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use portcullis_core::Principal;
use portcullis_test_util::jwt::JwtKey;
use tower::service_fn;

use crate::fetch::{FetchFuture, Fetched, HttpFetch};

type Doc = Result<(u16, String, Option<Duration>), String>;

/// A fetcher that serves scripted documents, counts calls and can be slow.
#[derive(Debug, Default)]
pub(crate) struct ScriptedFetcher {
    docs: Mutex<HashMap<String, Doc>>,
    calls: AtomicU64,
    delay: Mutex<Duration>,
}

impl ScriptedFetcher {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn serve(&self, url: &str, body: &str, max_age: Option<u64>) {
        self.docs.lock().unwrap().insert(
            url.to_owned(),
            Ok((200, body.to_owned(), max_age.map(Duration::from_secs))),
        );
    }

    pub(crate) fn status(&self, url: &str, status: u16) {
        self.docs
            .lock()
            .unwrap()
            .insert(url.to_owned(), Ok((status, String::new(), None)));
    }

    pub(crate) fn fail(&self, url: &str) {
        self.docs
            .lock()
            .unwrap()
            .insert(url.to_owned(), Err("connection refused".to_owned()));
    }

    pub(crate) fn delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl HttpFetch for ScriptedFetcher {
    fn get<'a>(&'a self, url: &'a str) -> FetchFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let doc = self
                .docs
                .lock()
                .unwrap()
                .get(url)
                .cloned()
                .unwrap_or_else(|| Err(format!("no document at {url}")));
            doc.map(|(status, body, max_age)| Fetched {
                status,
                body: Bytes::from(body),
                max_age,
            })
        })
    }
}

/// A JWKS document holding `keys`.
pub(crate) fn jwks_of(keys: &[&JwtKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// The service behind the layer: counts calls and answers with the principal's subject and
/// whether it saw an `authorization` header.
pub(crate) fn upstream() -> (
    impl tower::Service<Request<()>, Response = Response<Bytes>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service = service_fn(move |req: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let subject = req
            .extensions()
            .get::<Principal>()
            .map(|p| p.subject().to_owned())
            .unwrap_or_default();
        let saw_auth = req.headers().contains_key(http::header::AUTHORIZATION)
            || req.headers().contains_key("x-api-key");
        async move {
            Ok::<_, Infallible>(Response::new(Bytes::from(format!(
                "{subject}|credential-visible={saw_auth}"
            ))))
        }
    });
    (service, calls)
}
