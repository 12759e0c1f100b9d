//! Building rustls server configurations from PEM files: server certificates selected by SNI,
//! client authentication against trust bundles (per host where configured), and CRLs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use portcullis_core::{ConfigError, duration};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::error::ZtlsError;
use crate::verifier::RequireClientAuthEku;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ClientAuth {
    /// Every client must present a certificate that verifies (the default).
    #[default]
    Required,
    /// A certificate is asked for and verified if sent; clients without one are let through
    /// (the [`ZeroTrustLayer`](crate::ZeroTrustLayer) can still require one per route).
    Optional,
    /// No certificate is asked for.
    Off,
}

/// Which certificates CRLs are checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum CrlScope {
    /// The client's own certificate (the default; NGINX's behaviour).
    #[default]
    EndEntity,
    /// Every certificate in the chain (CRLs for every CA must then be provided).
    Chain,
}

/// A server certificate and the host names it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateConfig {
    /// Host names (`api.example.org`, `*.example.org`) this certificate is selected for by SNI.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The certificate chain, PEM (leaf first).
    pub cert_file: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Serve this certificate to clients that send no SNI or an unknown name.
    #[serde(default)]
    pub default: bool,
}

/// Trust bundles for some hosts, replacing the global ones for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostTrustConfig {
    /// The hosts (as in [`CertificateConfig::hosts`]).
    pub hosts: Vec<String>,
    /// CA bundles (PEM) trusted for client certificates on these hosts.
    pub trust_bundles: Vec<PathBuf>,
    /// Client authentication for these hosts, when it differs from the global
    /// [`ZtlsConfig::client_auth`] (for example `required` here, `off` everywhere else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// CRLs for these hosts, replacing the global [`ZtlsConfig::crls`] when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
}

/// The TLS side of the zero-trust server: what the files are and how they are used.
///
/// ```yaml
/// certificates:
///   - { hosts: [api.example.org], certFile: /tls/api.crt, keyFile: /tls/api.key, default: true }
///   - { hosts: ["*.models.example.org"], certFile: /tls/models.crt, keyFile: /tls/models.key }
/// clientAuth: required
/// trustBundles: [/pki/clients-ca.pem]
/// hostTrust:
///   - { hosts: [partner.example.org], trustBundles: [/pki/partner-ca.pem] }
/// crls: [/pki/clients.crl.pem]
/// reloadInterval: 5s
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZtlsConfig {
    /// Server certificates.
    pub certificates: Vec<CertificateConfig>,
    /// Client authentication.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// CA bundles trusted for client certificates.
    #[serde(default)]
    pub trust_bundles: Vec<PathBuf>,
    /// Per-host trust bundles.
    #[serde(default)]
    pub host_trust: Vec<HostTrustConfig>,
    /// Certificate revocation lists (PEM).
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Which certificates CRLs apply to.
    #[serde(default)]
    pub crl_scope: CrlScope,
    /// Accept a certificate whose revocation status no CRL covers. Off by default: with CRLs
    /// configured, an issuer without a CRL fails closed.
    #[serde(default)]
    pub allow_unknown_revocation_status: bool,
    /// How often the files are checked for changes.
    #[serde(default = "default_reload_interval", with = "duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// The contents of every file a [`ZtlsConfig`] names, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FileSet {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl FileSet {
    pub(crate) fn read(config: &ZtlsConfig) -> Result<Self, ZtlsError> {
        let mut files = BTreeMap::new();
        let mut read = |field: String, path: &Path| -> Result<(), ZtlsError> {
            if !files.contains_key(path) {
                let bytes = std::fs::read(path).map_err(|e| ZtlsError::Read {
                    field,
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                files.insert(path.to_owned(), bytes);
            }
            Ok(())
        };
        for (i, c) in config.certificates.iter().enumerate() {
            read(format!("certificates[{i}].certFile"), &c.cert_file)?;
            read(format!("certificates[{i}].keyFile"), &c.key_file)?;
        }
        for (i, p) in config.trust_bundles.iter().enumerate() {
            read(format!("trustBundles[{i}]"), p)?;
        }
        for (i, h) in config.host_trust.iter().enumerate() {
            for (j, p) in h.trust_bundles.iter().enumerate() {
                read(format!("hostTrust[{i}].trustBundles[{j}]"), p)?;
            }
            for (j, p) in h.crls.iter().enumerate() {
                read(format!("hostTrust[{i}].crls[{j}]"), p)?;
            }
        }
        for (i, p) in config.crls.iter().enumerate() {
            read(format!("crls[{i}]"), p)?;
        }
        Ok(Self { files })
    }

    /// A digest of every file's path and content: equal digests mean nothing changed.
    pub(crate) fn fingerprint(&self) -> [u8; 32] {
        let mut all = Vec::new();
        for (path, bytes) in &self.files {
            all.extend_from_slice(path.to_string_lossy().as_bytes());
            all.push(0);
            all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            all.extend_from_slice(bytes);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, &all).as_ref());
        out
    }

    fn get(&self, path: &Path) -> &[u8] {
        self.files.get(path).map_or(&[], Vec::as_slice)
    }
}

/// Chooses the server certificate by SNI: exact names, then `*.` wildcards (one label), then
/// the default.
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

/// The wildcard-table key for a host name: `a.example.org` → `example.org`.
fn parent(host: &str) -> Option<&str> {
    host.split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| r.contains('.'))
}

/// Whether `host` (lowercase) matches the configured name `pattern` (exact or `*.suffix`).
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => parent(host) == Some(suffix),
        None => pattern == host,
    }
}

impl SniResolver {
    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact
                .get(&name)
                .or_else(|| parent(&name).and_then(|p| self.wildcard.get(p)))
                .cloned()
        });
        found.or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(client_hello.server_name())
    }
}

/// The built configurations: one for most hosts, and one per host group with its own trust.
#[derive(Debug, Clone)]
pub struct ServerConfigs {
    default: Arc<ServerConfig>,
    per_host: Vec<(Vec<String>, Arc<ServerConfig>)>,
}

impl ServerConfigs {
    /// The configuration for connections to `sni` (or without SNI).
    pub fn for_sni(&self, sni: Option<&str>) -> Arc<ServerConfig> {
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            for (hosts, config) in &self.per_host {
                if hosts.iter().any(|h| host_matches(h, &name)) {
                    return Arc::clone(config);
                }
            }
        }
        Arc::clone(&self.default)
    }

    /// The configuration for hosts without their own trust bundles: what a plain
    /// `tokio_rustls::TlsAcceptor` would use.
    pub fn default_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.default)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn check_host(field: &str, host: &str) -> Result<String, ConfigError> {
    let h = host.to_ascii_lowercase();
    let bare = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && !bare.contains('*')
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok || (h.starts_with("*.") && !bare.contains('.')) {
        return Err(ConfigError::new(
            field,
            format!("`{host}` is not a host name"),
            "write `api.example.org` or `*.example.org`",
        ));
    }
    Ok(h)
}

fn certified_key(
    i: usize,
    c: &CertificateConfig,
    files: &FileSet,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, ZtlsError> {
    let field = format!("certificates[{i}].certFile");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(files.get(&c.cert_file))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ZtlsError::content(
                    &field,
                    &c.cert_file,
                    format!("bad PEM: {e}"),
                    "write the chain as PEM CERTIFICATE blocks, leaf first",
                )
            })?;
    if chain.is_empty() {
        return Err(ZtlsError::content(
            &field,
            &c.cert_file,
            "no certificate",
            "write the chain as PEM CERTIFICATE blocks, leaf first",
        ));
    }
    let key_field = format!("certificates[{i}].keyFile");
    let key = PrivateKeyDer::from_pem_slice(files.get(&c.key_file)).map_err(|e| {
        ZtlsError::content(
            &key_field,
            &c.key_file,
            format!("no usable private key: {e}"),
            "write the key as PEM (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        ZtlsError::content(
            &key_field,
            &c.key_file,
            format!("the key does not fit the certificate: {e}"),
            "pair each certificate with its own private key",
        )
    })?;
    Ok(Arc::new(certified))
}

fn root_store(
    field: &str,
    paths: &[PathBuf],
    files: &FileSet,
) -> Result<Arc<RootCertStore>, ZtlsError> {
    let mut roots = RootCertStore::empty();
    for (j, path) in paths.iter().enumerate() {
        let field = format!("{field}[{j}]");
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(files.get(path)) {
            let cert = cert.map_err(|e| {
                ZtlsError::content(
                    &field,
                    path,
                    format!("bad PEM: {e}"),
                    "write CA certificates as PEM CERTIFICATE blocks",
                )
            })?;
            roots.add(cert).map_err(|e| {
                ZtlsError::content(
                    &field,
                    path,
                    format!("not a usable CA certificate: {e}"),
                    "check the bundle holds CA certificates",
                )
            })?;
            count += 1;
        }
        if count == 0 {
            return Err(ZtlsError::content(
                &field,
                path,
                "no certificate in the bundle",
                "write CA certificates as PEM CERTIFICATE blocks",
            ));
        }
    }
    Ok(Arc::new(roots))
}

fn crls(
    field: &str,
    paths: &[PathBuf],
    files: &FileSet,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ZtlsError> {
    let mut out = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let before = out.len();
        for crl in CertificateRevocationListDer::pem_slice_iter(files.get(path)) {
            out.push(crl.map_err(|e| {
                ZtlsError::content(
                    &field,
                    path,
                    format!("bad PEM: {e}"),
                    "write CRLs as PEM X509 CRL blocks",
                )
            })?);
        }
        if out.len() == before {
            return Err(ZtlsError::content(
                &field,
                path,
                "no CRL in the file",
                "write CRLs as PEM X509 CRL blocks",
            ));
        }
    }
    Ok(out)
}

fn server_config(
    config: &ZtlsConfig,
    mode: ClientAuth,
    resolver: Arc<SniResolver>,
    bundles: Option<(&str, &[PathBuf])>,
    crl_list: &[CertificateRevocationListDer<'static>],
    files: &FileSet,
) -> Result<Arc<ServerConfig>, ZtlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ZtlsError::Tls(e.to_string()))?;
    let builder = match (mode, bundles) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(ConfigError::new(
                "trustBundles",
                "client authentication is on but no trust bundle is configured",
                "list the CA bundles that issue client certificates, or set `clientAuth: off`",
            )
            .into());
        }
        (mode, Some((field, paths))) => {
            let roots = root_store(field, paths, files)?;
            let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider);
            if !crl_list.is_empty() {
                v = v.with_crls(crl_list.iter().cloned());
                if config.crl_scope == CrlScope::EndEntity {
                    v = v.only_check_end_entity_revocation();
                }
                if config.allow_unknown_revocation_status {
                    v = v.allow_unknown_revocation_status();
                }
            }
            if mode == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| ZtlsError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(RequireClientAuthEku::new(verifier)))
        }
    };
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

impl ServerConfigs {
    /// Builds the configurations from `config`, reading its files now.
    ///
    /// # Errors
    ///
    /// If a file cannot be read or parsed, a key does not fit its certificate, or the
    /// configuration is inconsistent; the error names the field and the file.
    pub fn load(config: &ZtlsConfig) -> Result<Self, ZtlsError> {
        Self::build(config, &FileSet::read(config)?)
    }

    /// Builds the configurations from `config` with the files' contents given: `contents`
    /// maps each path the configuration names to its bytes (for certificates held elsewhere
    /// than in files, such as Kubernetes Secrets, under names of the caller's choosing).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load); a path missing from `contents` is read as empty, and so
    /// reported as holding no certificate, key, or CRL.
    pub fn from_contents(
        config: &ZtlsConfig,
        contents: BTreeMap<PathBuf, Vec<u8>>,
    ) -> Result<Self, ZtlsError> {
        Self::build(config, &FileSet { files: contents })
    }

    pub(crate) fn build(config: &ZtlsConfig, files: &FileSet) -> Result<Self, ZtlsError> {
        if config.certificates.is_empty() {
            return Err(ConfigError::new(
                "certificates",
                "no server certificate is configured",
                "add at least one certificate with its key",
            )
            .into());
        }
        let provider = provider();
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        };
        for (i, c) in config.certificates.iter().enumerate() {
            let key = certified_key(i, c, files, &provider)?;
            for (j, host) in c.hosts.iter().enumerate() {
                let host = check_host(&format!("certificates[{i}].hosts[{j}]"), host)?;
                let table = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut resolver.wildcard, suffix.to_owned()),
                    None => (&mut resolver.exact, host.clone()),
                };
                if table.0.insert(table.1, Arc::clone(&key)).is_some() {
                    return Err(ConfigError::new(
                        format!("certificates[{i}].hosts[{j}]"),
                        format!("`{host}` is served by two certificates"),
                        "list each host once",
                    )
                    .into());
                }
            }
            if c.default || c.hosts.is_empty() {
                if resolver.default.is_some() {
                    return Err(ConfigError::new(
                        format!("certificates[{i}].default"),
                        "two default certificates",
                        "mark one certificate as the default",
                    )
                    .into());
                }
                resolver.default = Some(key);
            }
        }
        if resolver.default.is_none() {
            resolver.default = config
                .certificates
                .first()
                .map(|c| certified_key(0, c, files, &provider))
                .transpose()?;
        }
        let resolver = Arc::new(resolver);
        let crl_list = crls("crls", &config.crls, files)?;
        let global = (!config.trust_bundles.is_empty())
            .then_some(("trustBundles", config.trust_bundles.as_slice()));
        let default = server_config(
            config,
            config.client_auth,
            Arc::clone(&resolver),
            global,
            &crl_list,
            files,
        )?;
        let mut per_host = Vec::with_capacity(config.host_trust.len());
        for (i, h) in config.host_trust.iter().enumerate() {
            let hosts = h
                .hosts
                .iter()
                .enumerate()
                .map(|(j, host)| check_host(&format!("hostTrust[{i}].hosts[{j}]"), host))
                .collect::<Result<Vec<_>, _>>()?;
            if h.trust_bundles.is_empty() {
                return Err(ConfigError::new(
                    format!("hostTrust[{i}].trustBundles"),
                    "empty",
                    "list at least one CA bundle",
                )
                .into());
            }
            let field = format!("hostTrust[{i}].trustBundles");
            let host_crls = if h.crls.is_empty() {
                crl_list.clone()
            } else {
                crls(&format!("hostTrust[{i}].crls"), &h.crls, files)?
            };
            let cfg = server_config(
                config,
                h.client_auth.unwrap_or(config.client_auth),
                Arc::clone(&resolver),
                Some((&field, &h.trust_bundles)),
                &host_crls,
                files,
            )?;
            per_host.push((hosts, cfg));
        }
        Ok(Self { default, per_host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("api.example.org", "api.example.org"));
        assert!(!host_matches("api.example.org", "www.example.org"));
        assert!(host_matches("*.example.org", "api.example.org"));
        assert!(!host_matches("*.example.org", "a.b.example.org"));
        assert!(!host_matches("*.example.org", "example.org"));
        assert_eq!(parent("a.example.org"), Some("example.org"));
        assert_eq!(parent("localhost"), None);
        assert_eq!(parent("a.org"), None);
        for bad in ["", "*", "*.org", "a..b", "a b.org", "a.*.org"] {
            assert!(check_host("h", bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_host("h", "API.Example.org").unwrap(),
            "api.example.org"
        );
    }
}
