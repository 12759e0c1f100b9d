//! The objects the route table is made from, and reading them from YAML manifests.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::policy::PortcullisPolicy;

/// Every object the route table depends on.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Ingresses (of any class: the compiler picks ours).
    pub ingresses: Vec<Ingress>,
    /// IngressClasses.
    pub classes: Vec<IngressClass>,
    /// Policies.
    pub policies: Vec<PortcullisPolicy>,
    /// Services (to map a backend's port number to its endpoints' port).
    pub services: Vec<Service>,
    /// EndpointSlices of the backends.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Secrets (TLS certificates, CA bundles, keys).
    pub secrets: Vec<Secret>,
}

/// A manifest document that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub file: PathBuf,
    /// The document in the file, from 1.
    pub document: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (document {}): {}",
            self.file.display(),
            self.document,
            self.message
        )
    }
}

impl Snapshot {
    /// Reads every `*.yaml` / `*.yml` file of `dir` (not recursively), in name order. A
    /// document that does not parse, or of a kind this ingress does not read, is reported and
    /// skipped; the rest are kept.
    ///
    /// # Errors
    ///
    /// The directory cannot be read.
    pub fn load_dir(dir: &Path) -> std::io::Result<(Self, Vec<ManifestError>)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut snapshot = Self::default();
        let mut errors = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            snapshot.add_yaml(&text, &file, &mut errors);
        }
        Ok((snapshot, errors))
    }

    /// Adds the documents of one YAML text.
    pub fn add_yaml(&mut self, text: &str, file: &Path, errors: &mut Vec<ManifestError>) {
        let error = |document: usize, message: String| ManifestError {
            file: file.to_path_buf(),
            document,
            message,
        };
        let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(text) {
            Ok(d) => d,
            Err(e) => {
                errors.push(error(1, format!("not YAML: {e}")));
                return;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            if let Err(message) = self.add(doc) {
                errors.push(error(i + 1, message));
            }
        }
    }

    /// Adds one object, by its `kind`.
    ///
    /// # Errors
    ///
    /// An unknown kind, or an object that does not match its kind's schema.
    pub fn add(&mut self, doc: serde_json::Value) -> Result<(), String> {
        let kind = doc
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let api = doc
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let bad = |e: serde_json::Error| format!("{kind}: {e}");
        match (api.as_str(), kind.as_str()) {
            ("networking.k8s.io/v1", "Ingress") => {
                self.ingresses
                    .push(serde_json::from_value(doc).map_err(bad)?);
            }
            ("networking.k8s.io/v1", "IngressClass") => {
                self.classes.push(serde_json::from_value(doc).map_err(bad)?);
            }
            ("portcullis.dev/v1alpha1", "PortcullisPolicy") => {
                self.policies
                    .push(serde_json::from_value(doc).map_err(bad)?);
            }
            ("v1", "Service") => self
                .services
                .push(serde_json::from_value(doc).map_err(bad)?),
            ("v1", "Secret") => self.secrets.push(serde_json::from_value(doc).map_err(bad)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                self.endpoint_slices
                    .push(serde_json::from_value(doc).map_err(bad)?);
            }
            _ => {
                return Err(format!(
                    "`{api}` `{kind}` is not read here: use Ingress, IngressClass, PortcullisPolicy, Service, EndpointSlice or Secret"
                ));
            }
        }
        Ok(())
    }
}
