//! The route a request was matched to.

use serde::Serialize;

use crate::error::{ValueError, check_text};

/// The longest route, namespace, ingress or model name kept, in bytes.
pub const MAX_ROUTE_NAME_LEN: usize = 253;

/// The route a request was matched to, written by the router and read by every layer (rate
/// limits keyed by route or model, per-route WAF exclusions, audit).
///
/// # Examples
///
/// ```
/// use portcullis_core::RouteInfo;
///
/// let route = RouteInfo::new("chat")?
///     .with_namespace("ml")?
///     .with_ingress("llm-gateway")?
///     .with_model("llama-3.1-70b")?;
/// assert_eq!(route.qualified_name(), "ml/llm-gateway/chat");
/// assert_eq!(route.model(), Some("llama-3.1-70b"));
/// # Ok::<(), portcullis_core::ValueError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RouteInfo {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
}

impl RouteInfo {
    /// A route called `name`.
    ///
    /// # Errors
    ///
    /// If `name` is empty, longer than [`MAX_ROUTE_NAME_LEN`] or holds control characters.
    pub fn new(name: impl Into<String>) -> Result<Self, ValueError> {
        let name = name.into();
        check_text("route name", &name, MAX_ROUTE_NAME_LEN)?;
        Ok(Self {
            name,
            namespace: None,
            ingress: None,
            model: None,
        })
    }

    /// The Kubernetes namespace the route was declared in.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Result<Self, ValueError> {
        let namespace = namespace.into();
        check_text("route namespace", &namespace, MAX_ROUTE_NAME_LEN)?;
        self.namespace = Some(namespace);
        Ok(self)
    }

    /// The Ingress object the route came from.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub fn with_ingress(mut self, ingress: impl Into<String>) -> Result<Self, ValueError> {
        let ingress = ingress.into();
        check_text("route ingress", &ingress, MAX_ROUTE_NAME_LEN)?;
        self.ingress = Some(ingress);
        Ok(self)
    }

    /// The model the request is for, when known (from the route's policy, or the request body's
    /// `model` field once a layer has read it).
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub fn with_model(mut self, model: impl Into<String>) -> Result<Self, ValueError> {
        let model = model.into();
        check_text("model name", &model, MAX_ROUTE_NAME_LEN)?;
        self.model = Some(model);
        Ok(self)
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace, if the route came from Kubernetes.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The Ingress object, if any.
    pub fn ingress(&self) -> Option<&str> {
        self.ingress.as_deref()
    }

    /// The model name, when known.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// `namespace/ingress/name`, leaving out the parts that are not set.
    pub fn qualified_name(&self) -> String {
        let mut out = String::new();
        for part in [self.namespace.as_deref(), self.ingress.as_deref()]
            .into_iter()
            .flatten()
        {
            out.push_str(part);
            out.push('/');
        }
        out.push_str(&self.name);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(RouteInfo::new("").is_err());
        assert!(RouteInfo::new("a\nb").is_err());
        assert!(RouteInfo::new("x".repeat(MAX_ROUTE_NAME_LEN + 1)).is_err());
        assert!(RouteInfo::new("x".repeat(MAX_ROUTE_NAME_LEN)).is_ok());
        let r = RouteInfo::new("r").unwrap();
        assert!(r.clone().with_namespace("").is_err());
        assert!(r.clone().with_ingress("i\u{0}").is_err());
        assert!(r.clone().with_model("m\t").is_err());
    }

    #[test]
    fn qualified_names() {
        let r = RouteInfo::new("r").unwrap();
        assert_eq!(r.qualified_name(), "r");
        assert_eq!(r.model(), None);
        let r = r.with_ingress("ing").unwrap();
        assert_eq!(r.qualified_name(), "ing/r");
        let r = r.with_namespace("ns").unwrap();
        assert_eq!(r.qualified_name(), "ns/ing/r");
        assert_eq!(r.namespace(), Some("ns"));
        assert_eq!(r.ingress(), Some("ing"));
        assert_eq!(r.name(), "r");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["namespace"], "ns");
        assert!(json.get("model").is_none());
    }
}
