//! The Portcullis reference ingress: it reads Ingresses and `PortcullisPolicy` resources (from
//! Kubernetes, or from manifest files when there is no cluster), compiles them into a route
//! table, runs each route's security stack, and proxies to the model servers.

pub mod body;
mod conn;
pub mod kube_source;
pub mod manifests;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod stack;
pub mod tls;
pub mod upstream;
