//! The route table: a pure function of the objects, following the Ingress specification.
//!
//! - Only Ingresses of an IngressClass whose controller is [`CONTROLLER`] are served (and,
//!   when such a class is marked default, Ingresses with no class).
//! - Hosts: exact (`api.example.com`) or wildcard (`*.example.com`, exactly one label); a rule
//!   with no host matches every host. A request is routed by the most specific host whose
//!   rules have a matching path: exact host first, then wildcard, then rules without a host,
//!   then the default backend (so, as in Gateway API, a path a host's rules do not match
//!   falls through to less specific hosts).
//! - Paths: `Exact` (the whole path, case-sensitive), `Prefix` (element by element: `/foo`
//!   matches `/foo` and `/foo/bar`, not `/foobar`; a trailing slash is ignored) and
//!   `ImplementationSpecific` (here: as `Prefix`). Among matches, the longest path wins, and
//!   `Exact` wins over `Prefix` of the same length.
//! - Nothing matches: 404 problem+json.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use crate::manifests::Snapshot;
use crate::policy::{CONTROLLER, PolicySpec, PortcullisPolicy};

/// A problem with an object, reported without taking down the routes that work.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectError {
    /// `Kind namespace/name`.
    pub object: String,
    /// What is wrong, and the fix.
    pub message: String,
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// How a route matches paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Element by element; the segments of the prefix.
    Prefix(Vec<String>),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(segments) => {
                let mut request = path.split('/').filter(|s| !s.is_empty());
                segments
                    .iter()
                    .all(|s| request.next().is_some_and(|r| r == s))
            }
        }
    }

    /// The precedence key: longer first, then exact before prefix.
    fn rank(&self) -> (usize, bool) {
        match self {
            Self::Exact(p) => (p.trim_end_matches('/').len(), true),
            Self::Prefix(s) => (s.iter().map(|s| s.len() + 1).sum(), false),
        }
    }
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/service:port`.
    pub name: String,
    /// The ready endpoints (round-robin), in a stable order.
    pub endpoints: Vec<SocketAddr>,
}

/// One path of one rule of one Ingress.
#[derive(Debug, Clone)]
pub struct Route {
    /// `namespace/ingress`.
    pub ingress: String,
    /// The Ingress's namespace.
    pub namespace: String,
    /// The path match.
    pub path: PathMatch,
    /// The backend.
    pub backend: Arc<Backend>,
    /// The policy that applies, by name, with its spec.
    pub policy: Option<(String, Arc<PolicySpec>)>,
    /// The route's number in its table (0..[`RouteTable::len`]), to find what was built for
    /// it without hashing its key on every request.
    pub id: usize,
}

impl Route {
    /// A stable key for the route (its ingress, host and path), to reuse state across
    /// rebuilds.
    pub fn key(&self, host: &str) -> String {
        format!("{}|{host}|{:?}", self.ingress, self.path)
    }
}

/// The compiled routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Route>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Vec<Route>>,
    any: Vec<Route>,
    default: Option<Route>,
    /// Problems found while compiling.
    pub errors: Vec<ObjectError>,
}

/// A matched route and the host bucket it came from.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    /// The route.
    pub route: &'a Route,
    /// The rule host it matched (`*` for rules without a host, empty for the default
    /// backend).
    pub host: &'a str,
}

impl RouteTable {
    /// Compiles the objects.
    pub fn compile(s: &Snapshot) -> Self {
        let mut table = Self::default();
        let policies = resolve_policies(&s.policies, &mut table.errors);
        for ingress in our_ingresses(s) {
            let name = object_name(ingress);
            let namespace = ingress
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let policy = policies.get(&name).cloned();
            let Some(spec) = &ingress.spec else { continue };
            let report = |errors: &mut Vec<ObjectError>, message: String| {
                errors.push(ObjectError {
                    object: format!("Ingress {name}"),
                    message,
                });
            };
            let make =
                |backend: &IngressBackend, errors: &mut Vec<ObjectError>| -> Option<Arc<Backend>> {
                    match resolve_backend(s, &namespace, backend) {
                        Ok(b) => Some(Arc::new(b)),
                        Err(message) => {
                            report(errors, message);
                            None
                        }
                    }
                };
            if let Some(default) = &spec.default_backend {
                if table.default.is_some() {
                    report(
                        &mut table.errors,
                        "a default backend is already set by an older Ingress; this one is ignored"
                            .into(),
                    );
                } else if let Some(backend) = make(default, &mut table.errors) {
                    table.default = Some(Route {
                        ingress: name.clone(),
                        namespace: namespace.clone(),
                        path: PathMatch::Prefix(Vec::new()),
                        backend,
                        policy: policy.clone(),
                        id: 0,
                    });
                }
            }
            for rule in spec.rules.iter().flatten() {
                let host = rule.host.as_deref().map(str::to_ascii_lowercase);
                if let Some(h) = &host
                    && let Err(message) = check_host(h)
                {
                    report(&mut table.errors, message);
                    continue;
                }
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let path = p.path.as_deref().unwrap_or("/");
                    if !path.starts_with('/') {
                        report(
                            &mut table.errors,
                            format!("path `{path}` must start with `/`"),
                        );
                        continue;
                    }
                    let matcher = match p.path_type.as_str() {
                        "Exact" => PathMatch::Exact(path.to_owned()),
                        "Prefix" | "ImplementationSpecific" => PathMatch::Prefix(
                            path.split('/')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect(),
                        ),
                        other => {
                            report(
                                &mut table.errors,
                                format!(
                                    "pathType `{other}`: use Exact, Prefix or ImplementationSpecific"
                                ),
                            );
                            continue;
                        }
                    };
                    let Some(backend) = make(&p.backend, &mut table.errors) else {
                        continue;
                    };
                    let route = Route {
                        ingress: name.clone(),
                        namespace: namespace.clone(),
                        path: matcher,
                        backend,
                        policy: policy.clone(),
                        id: 0,
                    };
                    match host.as_deref() {
                        None => table.any.push(route),
                        Some(h) => match h.strip_prefix("*.") {
                            Some(suffix) => table
                                .wildcard
                                .entry(suffix.to_owned())
                                .or_default()
                                .push(route),
                            None => table.exact.entry(h.to_owned()).or_default().push(route),
                        },
                    }
                }
            }
        }
        // Longest first, exact before prefix; the sort is stable, so among equals the older
        // Ingress (compiled first) wins.
        let order = |routes: &mut Vec<Route>| {
            routes.sort_by_key(|r| std::cmp::Reverse(r.path.rank()));
        };
        table.exact.values_mut().for_each(order);
        table.wildcard.values_mut().for_each(order);
        order(&mut table.any);
        let all = table
            .exact
            .values_mut()
            .flatten()
            .chain(table.wildcard.values_mut().flatten())
            .chain(table.any.iter_mut())
            .chain(table.default.iter_mut());
        for (id, route) in all.enumerate() {
            route.id = id;
        }
        table
    }

    /// How many routes the table has (their ids are `0..len`).
    pub fn len(&self) -> usize {
        self.routes().count()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route for a request to `host` (the `Host` header or URI authority, port allowed)
    /// and `path`.
    pub fn find<'a>(&'a self, host: &str, path: &str) -> Option<Matched<'a>> {
        let host = normalize_host(host);
        let pick = |routes: &'a [Route]| routes.iter().find(|r| r.path.matches(path));
        if let Some((h, routes)) = self.exact.get_key_value(host.as_str())
            && let Some(route) = pick(routes)
        {
            return Some(Matched { route, host: h });
        }
        if let Some((_, parent)) = host.split_once('.')
            && let Some((h, routes)) = self.wildcard.get_key_value(parent)
            && let Some(route) = pick(routes)
        {
            return Some(Matched { route, host: h });
        }
        if let Some(route) = pick(&self.any) {
            return Some(Matched { route, host: "*" });
        }
        self.default
            .as_ref()
            .map(|route| Matched { route, host: "" })
    }

    /// Every route with its host bucket.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.exact
            .iter()
            .flat_map(|(h, rs)| rs.iter().map(move |r| (h.as_str(), r)))
            .chain(
                self.wildcard
                    .iter()
                    .flat_map(|(h, rs)| rs.iter().map(move |r| (h.as_str(), r))),
            )
            .chain(self.any.iter().map(|r| ("*", r)))
            .chain(self.default.iter().map(|r| ("", r)))
    }
}

/// Lowercase, without a port or a trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = if host.starts_with('[') {
        // An IPv6 literal, maybe with a port.
        host.split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn check_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && !name.contains('*')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host `{host}` is not a DNS name or a `*.`-wildcard of one"
        ))
    }
}

/// The Ingresses of our IngressClass (named, or the default class for those naming none),
/// oldest first: a conflict keeps the older object.
pub(crate) fn our_ingresses(s: &Snapshot) -> Vec<&Ingress> {
    let ours = |class: Option<&str>| -> bool {
        match class {
            Some(name) => s.classes.iter().any(|c| {
                c.metadata.name.as_deref() == Some(name)
                    && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
            }),
            None => s.classes.iter().any(|c| {
                c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
                    && c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("ingressclass.kubernetes.io/is-default-class"))
                        .is_some_and(|v| v == "true")
            }),
        }
    };
    let mut ingresses: Vec<&Ingress> = s
        .ingresses
        .iter()
        .filter(|i| {
            ours(
                i.spec
                    .as_ref()
                    .and_then(|s| s.ingress_class_name.as_deref()),
            )
        })
        .collect();
    ingresses.sort_by_key(|i| {
        (
            i.metadata.creation_timestamp.clone().map(|t| t.0),
            object_name(i),
        )
    });
    ingresses
}

pub(crate) fn object_name(i: &Ingress) -> String {
    format!(
        "{}/{}",
        i.metadata.namespace.as_deref().unwrap_or("default"),
        i.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The policy of each Ingress (`namespace/name`). Two policies for one Ingress: the older
/// applies, the other is reported.
pub(crate) fn resolve_policies(
    policies: &[PortcullisPolicy],
    errors: &mut Vec<ObjectError>,
) -> BTreeMap<String, (String, Arc<PolicySpec>)> {
    let mut sorted: Vec<&PortcullisPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata.name.clone(),
        )
    });
    let mut out: BTreeMap<String, (String, Arc<PolicySpec>)> = BTreeMap::new();
    for p in sorted {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let name = format!("{ns}/{}", p.metadata.name.as_deref().unwrap_or_default());
        let spec = Arc::new(p.spec.clone());
        for target in &p.spec.target_refs {
            if target.kind != "Ingress" || target.group != "networking.k8s.io" {
                errors.push(ObjectError {
                    object: format!("PortcullisPolicy {name}"),
                    message: format!(
                        "targetRefs: `{}/{}` is not an Ingress (group networking.k8s.io, kind Ingress)",
                        target.group, target.kind
                    ),
                });
                continue;
            }
            let key = format!("{ns}/{}", target.name);
            if let Some((older, _)) = out.get(&key) {
                errors.push(ObjectError {
                    object: format!("PortcullisPolicy {name}"),
                    message: format!(
                        "Ingress {key} already has the older policy {older}; this one does not apply to it"
                    ),
                });
                continue;
            }
            out.insert(key, (name.clone(), spec.clone()));
        }
    }
    out
}

/// The ready endpoints of a backend service's port.
fn resolve_backend(
    s: &Snapshot,
    namespace: &str,
    backend: &IngressBackend,
) -> Result<Backend, String> {
    let Some(service) = &backend.service else {
        return Err("backend: only service backends are supported".into());
    };
    let port = service.port.as_ref();
    let (number, port_name) = (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.clone()),
    );
    // A port number is mapped to the Service port's name, which EndpointSlice ports carry.
    let svc = s.services.iter().find(|v| {
        v.metadata.name.as_deref() == Some(service.name.as_str())
            && v.metadata.namespace.as_deref().unwrap_or("default") == namespace
    });
    let wanted_name = port_name.clone().or_else(|| {
        let n = number?;
        svc?.spec
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.port == n)
            .map(|p| p.name.clone().unwrap_or_default())
    });
    let label = format!(
        "{namespace}/{}:{}",
        service.name,
        port_name
            .clone()
            .or_else(|| number.map(|n| n.to_string()))
            .unwrap_or_default()
    );
    let mut endpoints = Vec::new();
    let mut slices = 0;
    for slice in &s.endpoint_slices {
        let labels = slice.metadata.labels.as_ref();
        if slice.metadata.namespace.as_deref().unwrap_or("default") != namespace
            || labels.and_then(|l| l.get("kubernetes.io/service-name")) != Some(&service.name)
        {
            continue;
        }
        slices += 1;
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = match &wanted_name {
            Some(name) => ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == name)
                .and_then(|p| p.port),
            // No Service to map the number: a slice with one port, or the same number.
            None => match ports {
                [only] => only.port,
                _ => ports.iter().find(|p| p.port == number).and_then(|p| p.port),
            },
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    endpoints.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    if slices == 0 {
        return Err(format!(
            "backend {label}: no EndpointSlice labelled kubernetes.io/service-name={}",
            service.name
        ));
    }
    endpoints.sort();
    endpoints.dedup();
    Ok(Backend {
        name: label,
        endpoints,
    })
}
