//! [`AuditConfig`]: where records go, how they are chained, signed and redacted, and what
//! happens when the queue is full or the sink fails.

use std::path::PathBuf;

use portcullis_core::ConfigError;
use serde::Deserialize;

/// Headers whose values are credentials: never written, whatever the configuration.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// Query parameters whose values are credentials: masked even when queries are kept.
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "api-key",
    "client_secret",
    "code",
    "id_token",
    "key",
    "password",
    "passwd",
    "refresh_token",
    "secret",
    "sig",
    "signature",
    "token",
    "x-amz-signature",
];

/// The audit log's configuration (camelCase in YAML and JSON).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// Where records go (default: standard output).
    #[serde(default)]
    pub sink: SinkConfig,
    /// When written records are forced to stable storage (default: at each checkpoint).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// The queue between the request path and the writer.
    #[serde(default)]
    pub queue: QueueConfig,
    /// What new requests meet while the sink cannot be written (default: `failClosed`).
    #[serde(default)]
    pub on_sink_error: OnSinkError,
    /// Signed checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// What is left out or masked.
    #[serde(default)]
    pub redaction: RedactionConfig,
}

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON Lines on standard output.
    #[default]
    Stdout,
    /// JSON Lines in rotating files.
    File(FileSinkConfig),
}

/// Rotating JSON Lines files: `DIR/PREFIX-<first seq, 20 digits>.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The directory (created if missing).
    pub dir: PathBuf,
    /// The file name prefix (default `audit`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// A file is closed once it holds this many bytes (default 100 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// ... or once it is this many seconds old (default one day).
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
    /// How many files to keep; older ones are deleted at rotation (default 0: keep all).
    #[serde(default)]
    pub retain_files: usize,
}

impl FileSinkConfig {
    /// Files in `dir` with the default prefix, size, age and retention.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            prefix: default_prefix(),
            max_bytes: default_max_bytes(),
            max_age_seconds: default_max_age(),
            retain_files: 0,
        }
    }
}

fn default_prefix() -> String {
    "audit".to_owned()
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_max_age() -> u64 {
    86_400
}

/// When records are forced to stable storage (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum FsyncPolicy {
    /// After every record: nothing acknowledged is lost in a power cut; slow.
    PerRecord,
    /// After every checkpoint (and at rotation and shutdown).
    #[default]
    PerCheckpoint,
    /// Never: the operating system decides.
    None,
}

/// The bounded queue between the request path and the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueConfig {
    /// Events the queue holds (default 65,536).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// What a request meets when the queue is full (default `block`).
    #[serde(default)]
    pub on_full: OnFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            on_full: OnFull::Block,
        }
    }
}

fn default_capacity() -> usize {
    65_536
}

/// What happens to an event when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnFull {
    /// The response's end waits for room: backpressure, nothing lost.
    #[default]
    Block,
    /// The event is dropped and counted; a signed gap record says how many.
    Drop,
}

/// What new requests meet while the sink cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnSinkError {
    /// 503 `audit.unavailable` until writing works again.
    #[default]
    FailClosed,
    /// Requests go on; the error is counted ([`AuditStats::write_errors`](crate::AuditStats)).
    FailOpen,
}

/// Signed checkpoints: every `everyRecords` records or `everySeconds` seconds, whichever
/// comes first, and at shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Default 1,000.
    #[serde(default = "default_every_records")]
    pub every_records: u64,
    /// Default 10.
    #[serde(default = "default_every_seconds")]
    pub every_seconds: u64,
    /// The Ed25519 private key (PKCS#8 PEM, as `portcullis-audit keygen` or `openssl genpkey
    /// -algorithm ed25519` writes it). Without one, checkpoints are written unsigned and
    /// `verify` reports them so.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_records: default_every_records(),
            every_seconds: default_every_seconds(),
            signing_key: None,
        }
    }
}

fn default_every_records() -> u64 {
    1_000
}

fn default_every_seconds() -> u64 {
    10
}

/// What is left out of records or masked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedactionConfig {
    /// The query string (default `mask`: parameter names kept, values replaced by `***`).
    #[serde(default)]
    pub query: QueryPolicy,
    /// Request headers recorded, by name (default `user-agent`). Credential headers
    /// ([`CREDENTIAL_HEADERS`], `credentialHeaders`) cannot be listed.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// Headers recorded as present with the value `***`.
    #[serde(default)]
    pub mask_headers: Vec<String>,
    /// More headers that carry credentials in this deployment: never written.
    #[serde(default)]
    pub credential_headers: Vec<String>,
    /// Pseudonymise the principal's subject and the client IP with HMAC-SHA256.
    #[serde(default)]
    pub pseudonymize: Option<PseudonymizeConfig>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            query: QueryPolicy::Mask,
            headers: default_headers(),
            mask_headers: Vec::new(),
            credential_headers: Vec::new(),
            pseudonymize: None,
        }
    }
}

fn default_headers() -> Vec<String> {
    vec!["user-agent".to_owned()]
}

/// How the query string is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum QueryPolicy {
    /// As received, except credential parameters ([`CREDENTIAL_PARAMS`]), masked.
    Keep,
    /// Names kept, values `***`.
    #[default]
    Mask,
    /// Left out.
    Drop,
}

/// HMAC-SHA256 pseudonyms: `hmac:<32 hex digits>`, the same for the same input and key, so
/// records stay linkable without naming the person or address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PseudonymizeConfig {
    /// A file holding the key: at least 32 bytes.
    pub key_file: PathBuf,
    /// Pseudonymise the principal's subject (default true).
    #[serde(default = "yes")]
    pub subject: bool,
    /// Pseudonymise the client IP (default true).
    #[serde(default = "yes")]
    pub client_ip: bool,
}

fn yes() -> bool {
    true
}

impl AuditConfig {
    /// Checks the values serde cannot.
    ///
    /// # Errors
    ///
    /// A zero queue capacity, checkpoint interval, file size or age; a credential header
    /// listed to be recorded; an invalid header name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queue.capacity == 0 {
            return Err(ConfigError::new(
                "queue.capacity",
                "0 holds no event",
                "use a positive number, e.g. 65536",
            ));
        }
        if self.checkpoint.every_records == 0 || self.checkpoint.every_seconds == 0 {
            return Err(ConfigError::new(
                "checkpoint",
                "everyRecords and everySeconds must be positive",
                "e.g. everyRecords: 1000, everySeconds: 10",
            ));
        }
        if let SinkConfig::File(f) = &self.sink {
            if f.max_bytes == 0 || f.max_age_seconds == 0 {
                return Err(ConfigError::new(
                    "sink.maxBytes",
                    "maxBytes and maxAgeSeconds must be positive",
                    "e.g. maxBytes: 104857600, maxAgeSeconds: 86400",
                ));
            }
            if f.prefix.is_empty()
                || !f
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(ConfigError::new(
                    "sink.prefix",
                    format!("`{}` is not a plain file name prefix", f.prefix),
                    "use letters, digits, `-`, `_` and `.`",
                ));
            }
        }
        let r = &self.redaction;
        for (field, list) in [
            ("redaction.headers", &r.headers),
            ("redaction.maskHeaders", &r.mask_headers),
            ("redaction.credentialHeaders", &r.credential_headers),
        ] {
            for name in list {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(ConfigError::new(
                        field,
                        format!("`{name}` is not a header name"),
                        "list header names such as user-agent",
                    ));
                }
            }
        }
        for name in r.headers.iter().chain(&r.mask_headers) {
            if self.is_credential_header(name) {
                return Err(ConfigError::new(
                    "redaction.headers",
                    format!("`{name}` carries credentials and is never recorded"),
                    "remove it from the list",
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn is_credential_header(&self, name: &str) -> bool {
        CREDENTIAL_HEADERS
            .iter()
            .copied()
            .chain(self.redaction.credential_headers.iter().map(String::as_str))
            .any(|c| c.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_cannot_be_recorded() {
        let mut c = AuditConfig::default();
        c.redaction.headers.push("Authorization".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("redaction.headers") && err.contains("Authorization"),
            "{err}"
        );
        let mut c = AuditConfig::default();
        c.redaction.credential_headers.push("x-tenant-key".into());
        c.redaction.mask_headers.push("X-Tenant-Key".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn parses_camel_case_with_defaults() {
        let c: AuditConfig = serde_json::from_str(
            r#"{"sink": {"type": "file", "dir": "/var/log/portcullis", "maxBytes": 1000},
                "queue": {"onFull": "drop"}, "onSinkError": "failOpen", "fsync": "none"}"#,
        )
        .unwrap();
        assert_eq!(c.queue.on_full, OnFull::Drop);
        assert_eq!(c.queue.capacity, 65_536);
        assert_eq!(c.on_sink_error, OnSinkError::FailOpen);
        assert!(
            matches!(&c.sink, SinkConfig::File(f) if f.max_bytes == 1000 && f.prefix == "audit")
        );
        assert!(c.validate().is_ok());
        assert!(serde_json::from_str::<AuditConfig>(r#"{"sinks": {}}"#).is_err());
    }
}
