//! Secret references inside a policy's sections.
//!
//! Any value of a section may be written as a reference to a key of a Secret in the policy's
//! namespace, and is replaced by the Secret's data before the section is given to its crate:
//!
//! ```yaml
//! authn:
//!   apiKeys:
//!     keys: {secretKeyRef: {name: api-keys, key: keys.yaml, as: yaml}}   # a list of hashes
//!   jwt:
//!     issuers:
//!     - issuer: https://issuer.example.com
//!       jwks: {inline: {secretKeyRef: {name: jwks, key: jwks.json, as: json}}}
//!       hmacSecret: {base64: {secretKeyRef: {name: hs256, key: secret, as: base64}}}
//! ```
//!
//! `as` is `text` (the default: the data as a UTF-8 string), `base64` (the data base64-encoded,
//! for binary secrets), or `json` / `yaml` (the data parsed as a document). A missing Secret or
//! key, or data that does not parse, is an error naming the section's path and the Secret; the
//! data itself is never part of an error.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::policy::PolicySpec;

/// `spec` with every `secretKeyRef` of its sections replaced by the Secret data.
///
/// # Errors
///
/// A reference that cannot be resolved; the message names the path and the Secret.
pub fn resolve(
    spec: &PolicySpec,
    namespace: &str,
    secrets: &[Secret],
) -> Result<PolicySpec, String> {
    let mut out = spec.clone();
    let sections = [
        ("authn", &mut out.authn),
        ("rateLimit", &mut out.rate_limit),
        ("principalRateLimit", &mut out.principal_rate_limit),
        ("tokenBudget", &mut out.token_budget),
        ("waf", &mut out.waf),
        ("ztls", &mut out.ztls),
    ];
    for (name, section) in sections {
        if let Some(value) = section {
            walk(value, name, namespace, secrets)?;
        }
    }
    Ok(out)
}

fn walk(value: &mut Value, path: &str, namespace: &str, secrets: &[Secret]) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("secretKeyRef") {
                if map.len() != 1 {
                    return Err(format!(
                        "{path}: `secretKeyRef` must be the only field of the value it replaces"
                    ));
                }
                *value = fetch(reference, path, namespace, secrets)?;
                return Ok(());
            }
            for (k, v) in map.iter_mut() {
                walk(v, &format!("{path}.{k}"), namespace, secrets)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, &format!("{path}[{i}]"), namespace, secrets)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The bytes of `key` in Secret `namespace/name` (its `data`, or `stringData` as manifests
/// may write it).
///
/// # Errors
///
/// The Secret or the key does not exist; the message names them (never the data).
pub fn secret_data(
    secrets: &[Secret],
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    let Some(secret) = secrets.iter().find(|s| {
        s.metadata.namespace.as_deref().unwrap_or("default") == namespace
            && s.metadata.name.as_deref() == Some(name)
    }) else {
        return Err(format!("Secret {namespace}/{name} does not exist"));
    };
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Ok(v.0.clone());
    }
    if let Some(v) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Ok(v.clone().into_bytes());
    }
    Err(format!("Secret {namespace}/{name} has no key `{key}`"))
}

fn fetch(
    reference: &Value,
    path: &str,
    namespace: &str,
    secrets: &[Secret],
) -> Result<Value, String> {
    let field = |f: &str| reference.get(f).and_then(Value::as_str);
    let (Some(name), Some(key)) = (field("name"), field("key")) else {
        return Err(format!(
            "{path}.secretKeyRef: give `name` and `key` (and optionally `as`: text, base64, json or yaml)"
        ));
    };
    if let Some(extra) = reference.as_object().and_then(|m| {
        m.keys()
            .find(|k| !matches!(k.as_str(), "name" | "key" | "as"))
    }) {
        return Err(format!(
            "{path}.secretKeyRef: unknown field `{extra}`; use name, key, as"
        ));
    }
    let data = secret_data(secrets, namespace, name, key).map_err(|e| format!("{path}: {e}"))?;
    let text = || {
        String::from_utf8(data.clone()).map_err(|_| {
            format!("{path}: Secret {namespace}/{name} key `{key}` is not UTF-8; use `as: base64`")
        })
    };
    match field("as").unwrap_or("text") {
        "text" => text().map(Value::String),
        "base64" => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(&data),
        )),
        "json" => serde_json::from_str(&text()?).map_err(|_| {
            format!("{path}: Secret {namespace}/{name} key `{key}` is not a JSON document")
        }),
        "yaml" => serde_saphyr::from_str(&text()?).map_err(|_| {
            format!("{path}: Secret {namespace}/{name} key `{key}` is not a YAML document")
        }),
        other => Err(format!(
            "{path}.secretKeyRef.as: `{other}`; use text, base64, json or yaml"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn secret(name: &str, key: &str, data: &[u8]) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some("ml".into());
        s.metadata.name = Some(name.into());
        s.data = Some([(key.to_owned(), ByteString(data.to_vec()))].into());
        s
    }

    #[test]
    fn references_are_replaced_by_the_data() {
        let secrets = [
            secret(
                "keys",
                "keys.yaml",
                b"- {id: a, sha256: abc, subject: team-a}\n",
            ),
            secret("hs", "secret", &[0, 159, 146, 150]),
            secret("jwks", "jwks.json", br#"{"keys": []}"#),
        ];
        let spec = PolicySpec {
            authn: Some(json!({
                "apiKeys": {"keys": {"secretKeyRef": {"name": "keys", "key": "keys.yaml", "as": "yaml"}}},
                "jwt": {"issuers": [{"issuer": "i",
                    "hmacSecret": {"base64": {"secretKeyRef": {"name": "hs", "key": "secret", "as": "base64"}}},
                    "jwks": {"inline": {"secretKeyRef": {"name": "jwks", "key": "jwks.json", "as": "json"}}}}]}
            })),
            ..PolicySpec::default()
        };
        let out = resolve(&spec, "ml", &secrets).unwrap();
        let authn = out.authn.unwrap();
        assert_eq!(authn["apiKeys"]["keys"][0]["subject"], "team-a");
        assert_eq!(
            authn["jwt"]["issuers"][0]["hmacSecret"]["base64"],
            "AJ+Slg=="
        );
        assert_eq!(
            authn["jwt"]["issuers"][0]["jwks"]["inline"],
            json!({"keys": []})
        );
    }

    #[test]
    fn bad_references_name_the_path_never_the_data() {
        let secrets = [secret("hs", "secret", &[0xff, 0xfe])];
        let with = |r: Value| PolicySpec {
            authn: Some(json!({"jwt": {"issuers": [{"hmacSecret": {"base64": r}}]}})),
            ..PolicySpec::default()
        };
        for (reference, want) in [
            (
                json!({"secretKeyRef": {"name": "nope", "key": "k"}}),
                "Secret ml/nope does not exist",
            ),
            (
                json!({"secretKeyRef": {"name": "hs", "key": "k"}}),
                "has no key `k`",
            ),
            (
                json!({"secretKeyRef": {"name": "hs", "key": "secret"}}),
                "not UTF-8",
            ),
            (
                json!({"secretKeyRef": {"name": "hs", "key": "secret", "as": "xml"}}),
                "use text, base64",
            ),
            (
                json!({"secretKeyRef": {"name": "hs"}}),
                "give `name` and `key`",
            ),
            (
                json!({"secretKeyRef": {"name": "hs", "key": "secret"}, "x": 1}),
                "only field",
            ),
        ] {
            let e = resolve(&with(reference), "ml", &secrets).unwrap_err();
            assert!(
                e.starts_with("authn.jwt.issuers[0].hmacSecret.base64"),
                "{e}"
            );
            assert!(e.contains(want), "{e}");
        }
        let e = resolve(
            &with(json!({"secretKeyRef": {"name": "hs", "key": "secret", "as": "base64"}})),
            "other",
            &secrets,
        )
        .unwrap_err();
        assert!(e.contains("Secret other/hs does not exist"), "{e}");
    }
}
