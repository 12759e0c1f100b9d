//! [`AuthnLayer`].

use tower::Layer;

use crate::authenticator::Authenticator;
use crate::service::Authn;

/// Applies [`Authn`] to a service: authenticates every request, puts the
/// [`Principal`](portcullis_core::Principal) into its extensions, and answers failures itself.
#[derive(Debug, Clone)]
pub struct AuthnLayer {
    auth: Authenticator,
}

impl AuthnLayer {
    /// A layer authenticating with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }

    /// The authenticator.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

impl<S> Layer<S> for AuthnLayer {
    type Service = Authn<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authn::new(inner, self.auth.clone())
    }
}
