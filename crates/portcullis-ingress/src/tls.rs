//! TLS from the objects: server certificates from the `spec.tls` Secrets of our Ingresses
//! (chosen by SNI), and client-certificate trust per host from their policies' `ztls`
//! sections.
//!
//! The plan is a pure function of the snapshot. Each certificate and each trust entry is
//! checked on its own, so one bad Secret is reported and left out while the others serve.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use portcullis_ztls::{CertificateConfig, ClientAuth, HostTrustConfig, ServerConfigs, ZtlsConfig};

use crate::manifests::Snapshot;
use crate::routes::{ObjectError, normalize_host, object_name, our_ingresses, resolve_policies};

/// What the TLS listener serves: a `portcullis-ztls` configuration whose "files" are Secret
/// keys, and their contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// The configuration (paths are `secret/<namespace>/<name>/<key>`).
    pub config: ZtlsConfig,
    /// The Secret data the paths name.
    pub contents: BTreeMap<PathBuf, Vec<u8>>,
}

impl TlsPlan {
    /// Builds the rustls configurations.
    ///
    /// # Errors
    ///
    /// The configuration cannot be built (the plan's entries were each checked, so this is
    /// only for combinations).
    pub fn build(&self) -> Result<ServerConfigs, String> {
        ServerConfigs::from_contents(&self.config, self.contents.clone()).map_err(|e| e.to_string())
    }
}

fn secret_key(s: &Snapshot, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
    crate::secrets::secret_data(&s.secrets, namespace, name, key)
}

fn path(namespace: &str, name: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("secret/{namespace}/{name}/{key}"))
}

fn base_config() -> ZtlsConfig {
    ZtlsConfig {
        certificates: Vec::new(),
        client_auth: ClientAuth::Off,
        trust_bundles: Vec::new(),
        host_trust: Vec::new(),
        crls: Vec::new(),
        crl_scope: portcullis_ztls::CrlScope::default(),
        allow_unknown_revocation_status: false,
        reload_interval: std::time::Duration::from_secs(5),
    }
}

/// Works out the TLS plan: `None` when no Ingress of ours has a usable TLS entry. An entry
/// whose Secret is missing or unusable keeps what `previous` served for it, if anything.
pub fn plan(s: &Snapshot, previous: Option<&TlsPlan>) -> (Option<TlsPlan>, Vec<ObjectError>) {
    let mut errors = Vec::new();
    let mut config = base_config();
    let mut contents = BTreeMap::new();
    let mut served: BTreeSet<String> = BTreeSet::new();
    // The TLS hosts of each Ingress, for its trust entry.
    let mut tls_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let ingresses = our_ingresses(s);
    for ingress in &ingresses {
        let name = object_name(ingress);
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let report = |errors: &mut Vec<ObjectError>, message: String| {
            errors.push(ObjectError {
                object: format!("Ingress {name}"),
                message,
            });
        };
        for (i, tls) in ingress
            .spec
            .iter()
            .flat_map(|s| s.tls.iter().flatten())
            .enumerate()
        {
            let Some(secret_name) = tls.secret_name.as_deref() else {
                report(
                    &mut errors,
                    format!("tls[{i}]: no secretName; name the kubernetes.io/tls Secret"),
                );
                continue;
            };
            let hosts: Vec<String> = tls
                .hosts
                .iter()
                .flatten()
                .map(|h| normalize_host(h))
                .collect();
            let taken: Vec<&String> = hosts.iter().filter(|h| served.contains(*h)).collect();
            if !taken.is_empty() {
                report(
                    &mut errors,
                    format!(
                        "tls[{i}]: {taken:?} already served by an older Ingress's certificate; this entry is ignored"
                    ),
                );
                continue;
            }
            let entry = CertificateConfig {
                hosts: hosts.clone(),
                cert_file: path(namespace, secret_name, "tls.crt"),
                key_file: path(namespace, secret_name, "tls.key"),
                default: false,
            };
            let checked = secret_key(s, namespace, secret_name, "tls.crt")
                .and_then(|crt| {
                    secret_key(s, namespace, secret_name, "tls.key").map(|key| (crt, key))
                })
                .and_then(|(crt, key)| {
                    // Checked alone, so one bad Secret does not take the others down.
                    let mut alone = base_config();
                    alone.certificates.push(entry.clone());
                    let files = BTreeMap::from([
                        (entry.cert_file.clone(), crt.clone()),
                        (entry.key_file.clone(), key.clone()),
                    ]);
                    ServerConfigs::from_contents(&alone, files)
                        .map(|_| (crt, key))
                        .map_err(|e| format!("Secret {namespace}/{secret_name}: {e}"))
                });
            let (crt, key) = match checked {
                Ok(pair) => pair,
                Err(message) => {
                    let kept = previous.and_then(|p| {
                        Some((
                            p.contents.get(&entry.cert_file)?.clone(),
                            p.contents.get(&entry.key_file)?.clone(),
                        ))
                    });
                    match kept {
                        Some(pair) => {
                            report(
                                &mut errors,
                                format!(
                                    "tls[{i}]: {message}; the previous certificate keeps serving"
                                ),
                            );
                            pair
                        }
                        None => {
                            report(&mut errors, format!("tls[{i}]: {message}"));
                            continue;
                        }
                    }
                }
            };
            if hosts.is_empty() {
                // An entry without hosts serves clients that send no (or an unknown) name.
                if config.certificates.iter().any(|c| c.default) {
                    report(
                        &mut errors,
                        format!(
                            "tls[{i}]: a default certificate (no hosts) is already set by an older entry; this one is ignored"
                        ),
                    );
                    continue;
                }
            }
            served.extend(hosts.iter().cloned());
            tls_hosts
                .entry(name.clone())
                .or_default()
                .extend(hosts.iter().cloned());
            contents.insert(entry.cert_file.clone(), crt);
            contents.insert(entry.key_file.clone(), key);
            config.certificates.push(CertificateConfig {
                default: hosts.is_empty(),
                ..entry
            });
        }
    }
    if config.certificates.is_empty() {
        return (None, errors);
    }
    // Client trust per policy, on its Ingresses' TLS hosts.
    let policies = resolve_policies(&s.policies, &mut Vec::new());
    let mut trusted: BTreeSet<String> = BTreeSet::new();
    for ingress in &ingresses {
        let name = object_name(ingress);
        let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
        let Some((policy_name, spec)) = policies.get(&name) else {
            continue;
        };
        let report = |errors: &mut Vec<ObjectError>, message: String| {
            errors.push(ObjectError {
                object: format!("PortcullisPolicy {policy_name}"),
                message,
            });
        };
        let section = match spec.ztls() {
            Ok(Some(section)) => section,
            Ok(None) => continue,
            // Reported with the route's stack.
            Err(_) => continue,
        };
        if section.client_auth == ClientAuth::Off {
            continue;
        }
        let hosts = tls_hosts.get(&name).cloned().unwrap_or_default();
        if hosts.is_empty() {
            report(
                &mut errors,
                format!(
                    "ztls: Ingress {name} has no TLS hosts (spec.tls with hosts), so no handshake can ask for a client certificate; its routes refuse requests without one"
                ),
            );
            continue;
        }
        if let Some(h) = hosts.iter().find(|h| trusted.contains(*h)) {
            report(
                &mut errors,
                format!(
                    "ztls: host `{h}` already trusts the client CA of an older policy; this one is not used for the handshake there"
                ),
            );
            continue;
        }
        let built = trust_entry(s, namespace, &section, &hosts, &config, &contents);
        let (entry, files) = match built {
            Ok(done) => done,
            Err(message) => {
                // The trust the hosts had keeps verifying their clients.
                let kept = previous.and_then(|p| {
                    let entry = p.config.host_trust.iter().find(|t| t.hosts == hosts)?;
                    let mut files = contents.clone();
                    for f in entry.trust_bundles.iter().chain(&entry.crls) {
                        files.insert(f.clone(), p.contents.get(f)?.clone());
                    }
                    Some((entry.clone(), files))
                });
                match kept {
                    Some(done) => {
                        report(
                            &mut errors,
                            format!("{message}; the previous client CA keeps verifying"),
                        );
                        done
                    }
                    None => {
                        report(
                            &mut errors,
                            format!(
                                "{message}; requests to its routes are refused until it is fixed"
                            ),
                        );
                        continue;
                    }
                }
            }
        };
        trusted.extend(hosts);
        contents = files;
        config.host_trust.push(entry);
    }
    (Some(TlsPlan { config, contents }), errors)
}

/// The trust entry of a `ztls` section on `hosts`, checked with the certificates planned so
/// far, and the contents it adds.
fn trust_entry(
    s: &Snapshot,
    namespace: &str,
    section: &crate::policy::ZtlsSection,
    hosts: &[String],
    config: &ZtlsConfig,
    contents: &BTreeMap<PathBuf, Vec<u8>>,
) -> Result<(HostTrustConfig, BTreeMap<PathBuf, Vec<u8>>), String> {
    let Some(ca) = &section.ca_secret else {
        return Err(
            "ztls.caSecret: missing; name the Secret holding the client CA bundle (or set clientAuth: off)"
                .into(),
        );
    };
    let ca_key = ca.key.as_deref().unwrap_or("ca.crt");
    let mut files = contents.clone();
    let ca_path = path(namespace, &ca.name, ca_key);
    let bytes =
        secret_key(s, namespace, &ca.name, ca_key).map_err(|m| format!("ztls.caSecret: {m}"))?;
    files.insert(ca_path.clone(), bytes);
    let mut crls = Vec::new();
    if let Some(crl) = &section.crl_secret {
        let key = crl.key.as_deref().unwrap_or("ca.crl");
        let crl_path = path(namespace, &crl.name, key);
        let bytes =
            secret_key(s, namespace, &crl.name, key).map_err(|m| format!("ztls.crlSecret: {m}"))?;
        files.insert(crl_path.clone(), bytes);
        crls.push(crl_path);
    }
    let entry = HostTrustConfig {
        hosts: hosts.to_vec(),
        trust_bundles: vec![ca_path],
        client_auth: Some(section.client_auth),
        crls,
    };
    let mut trial = config.clone();
    trial.host_trust = vec![entry.clone()];
    ServerConfigs::from_contents(&trial, files.clone()).map_err(|e| format!("ztls: {e}"))?;
    Ok((entry, files))
}
