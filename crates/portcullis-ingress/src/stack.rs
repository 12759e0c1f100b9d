//! A route's security stack, built once per route-table change from its policy:
//! client certificate policy → rate limit by client → authentication → rate limit by principal → WAF → proxy.

use std::convert::Infallible;

use http::{Request, Response};
use portcullis_authn::{AuthnConfig, AuthnLayer};
use portcullis_ratelimit::{RateLimitConfig, RateLimitLayer};
use portcullis_waf::{RequestBody, ResponseBody, WafConfig, WafLayer};
use portcullis_ztls::ZeroTrustLayer;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::body::BoxBody;
use crate::policy::PolicySpec;
use crate::proxy::Proxy;

/// A route's stack: boxed, cheap to clone, shared by every connection.
pub type RouteService = BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, Infallible>;

/// Builds the stack of `policy` (none: the plain proxy).
///
/// # Errors
///
/// A section that does not deserialize into its crate's configuration, or a configuration
/// its layer refuses; the message names the section.
pub fn build(policy: Option<&PolicySpec>, proxy: Proxy) -> Result<RouteService, String> {
    let mut service = RouteService::new(proxy);
    let Some(policy) = policy else {
        return Ok(service);
    };
    if let Some(waf) = &policy.waf {
        let config: WafConfig =
            serde_json::from_value(waf.clone()).map_err(|e| format!("waf: {e}"))?;
        let layer = WafLayer::try_from(config).map_err(|e| format!("waf: {e}"))?;
        service = RouteService::new(
            ServiceBuilder::new()
                .map_response(|r: Response<ResponseBody<BoxBody>>| r.map(BoxBody::new))
                .layer(layer)
                .map_request(|r: Request<RequestBody<BoxBody>>| r.map(BoxBody::new))
                .service(service),
        );
    }
    if let Some(limits) = &policy.principal_rate_limit {
        let layer = rate_limit("principalRateLimit", limits)?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    if let Some(authn) = &policy.authn {
        let config: AuthnConfig =
            serde_json::from_value(authn.clone()).map_err(|e| format!("authn: {e}"))?;
        let layer = AuthnLayer::try_from(config).map_err(|e| format!("authn: {e}"))?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    if let Some(limits) = &policy.rate_limit {
        let layer = rate_limit("rateLimit", limits)?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    if let Some(ztls) = policy.ztls()? {
        let layer =
            ZeroTrustLayer::try_from(&ztls.policy).map_err(|e| format!("ztls.policy: {e}"))?;
        service = RouteService::new(ServiceBuilder::new().layer(layer).service(service));
    }
    Ok(service)
}

fn rate_limit(section: &str, value: &serde_json::Value) -> Result<RateLimitLayer, String> {
    let config: RateLimitConfig =
        serde_json::from_value(value.clone()).map_err(|e| format!("{section}: {e}"))?;
    RateLimitLayer::try_from(&config).map_err(|e| format!("{section}: {e}"))
}
