//! A route's security stack, built once per route-table change from its policy:
//! client certificate policy → rate limit by client → authentication → rate limit by principal
//! → token budget → WAF → proxy.

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;

use http::{Request, Response};
use portcullis_authn::{AuthnConfig, AuthnLayer};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use portcullis_core::SystemClock;
use portcullis_ratelimit::{
    BudgetBody, RateLimitConfig, RateLimitLayer, TokenBudgetConfig, TokenBudgetLayer,
};
use portcullis_waf::{RequestBody, ResponseBody, WafConfig, WafLayer};
use portcullis_ztls::ZeroTrustLayer;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::body::BoxBody;
use crate::policy::PolicySpec;
use crate::proxy::Proxy;

/// A route's stack: boxed, cheap to clone, shared by every connection.
pub type RouteService = BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, Infallible>;

/// Layers built from policy sections, by policy, section and configuration. A layer whose
/// section did not change is reused, with its state (rate-limit counters, token budgets, JWKS
/// and token caches, the compiled WAF): every route of a policy shares it, and a change to
/// one section of a policy leaves the others' state alone.
#[derive(Clone, Default)]
pub struct Layers {
    built: HashMap<String, Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layers")
            .field("count", &self.built.len())
            .finish()
    }
}

impl Layers {
    /// Adds `other`'s layers.
    pub fn extend(&mut self, other: &Self) {
        for (k, v) in &other.built {
            self.built.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// How many layers are kept.
    pub fn len(&self) -> usize {
        self.built.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.built.is_empty()
    }
}

/// The layer of `section` (configured by `value`) of policy `policy`: from `cache` when
/// built before, else made and added. `used` records it for the route.
fn layer<T, F>(
    cache: &mut Layers,
    used: &mut Layers,
    policy: &str,
    section: &str,
    value: &serde_json::Value,
    make: F,
) -> Result<T, String>
where
    T: Clone + Send + Sync + 'static,
    F: FnOnce() -> Result<T, String>,
{
    let key = format!("{policy}\u{0}{section}\u{0}{value}");
    let built = match cache.built.get(&key).and_then(|a| a.downcast_ref::<T>()) {
        Some(t) => t.clone(),
        None => {
            let t = make()?;
            cache.built.insert(key.clone(), Arc::new(t.clone()));
            t
        }
    };
    used.built.insert(key, Arc::new(built.clone()));
    Ok(built)
}

/// Builds the stack of `policy` (its name and spec; none: the plain proxy), reusing the
/// layers of `cache`. Returns the stack and the layers it uses.
///
/// # Errors
///
/// A section that does not deserialize into its crate's configuration, or a configuration
/// its layer refuses; the message names the section.
pub fn build(
    policy: Option<(&str, &PolicySpec)>,
    proxy: Proxy,
    cache: &mut Layers,
) -> Result<(RouteService, Layers), String> {
    let mut service = RouteService::new(proxy);
    let mut used = Layers::default();
    let Some((name, policy)) = policy else {
        return Ok((service, used));
    };
    if let Some(waf) = &policy.waf {
        let layer = layer(cache, &mut used, name, "waf", waf, || {
            let config: WafConfig =
                serde_json::from_value(waf.clone()).map_err(|e| format!("waf: {e}"))?;
            WafLayer::try_from(config).map_err(|e| format!("waf: {e}"))
        })?;
        service = RouteService::new(
            ServiceBuilder::new()
                .map_response(|r: Response<ResponseBody<BoxBody>>| r.map(BoxBody::new))
                .layer(layer)
                .map_request(|r: Request<RequestBody<BoxBody>>| r.map(BoxBody::new))
                .service(service),
        );
    }
    if let Some(budget) = &policy.token_budget {
        let layer = layer(cache, &mut used, name, "tokenBudget", budget, || {
            let config: TokenBudgetConfig =
                serde_json::from_value(budget.clone()).map_err(|e| format!("tokenBudget: {e}"))?;
            TokenBudgetLayer::from_config(&config, Arc::new(SystemClock))
                .map_err(|e| format!("tokenBudget: {e}"))
        })?;
        service = RouteService::new(
            ServiceBuilder::new()
                .map_response(|r: Response<BudgetBody<BoxBody>>| r.map(BoxBody::new))
                .layer(layer)
                .map_request(|r: Request<Either<Full<Bytes>, BoxBody>>| r.map(BoxBody::new))
                .service(service),
        );
    }
    if let Some(limits) = &policy.principal_rate_limit {
        let layer = layer(cache, &mut used, name, "principalRateLimit", limits, || {
            rate_limit("principalRateLimit", limits)
        })?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    if let Some(authn) = &policy.authn {
        let layer = layer(cache, &mut used, name, "authn", authn, || {
            let config: AuthnConfig =
                serde_json::from_value(authn.clone()).map_err(|e| format!("authn: {e}"))?;
            AuthnLayer::try_from(config).map_err(|e| format!("authn: {e}"))
        })?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    if let Some(limits) = &policy.rate_limit {
        let layer = layer(cache, &mut used, name, "rateLimit", limits, || {
            rate_limit("rateLimit", limits)
        })?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    if let Some(ztls) = &policy.ztls {
        let layer = layer(cache, &mut used, name, "ztls", ztls, || {
            let section = policy.ztls()?.unwrap_or_default();
            ZeroTrustLayer::try_from(&section.policy).map_err(|e| format!("ztls.policy: {e}"))
        })?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    Ok((service, used))
}

fn rate_limit(section: &str, value: &serde_json::Value) -> Result<RateLimitLayer, String> {
    let config: RateLimitConfig =
        serde_json::from_value(value.clone()).map_err(|e| format!("{section}: {e}"))?;
    RateLimitLayer::try_from(&config).map_err(|e| format!("{section}: {e}"))
}
