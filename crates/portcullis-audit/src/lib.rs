//! Tamper-evident compliance audit log for HTTP services, as a tower layer.
//!
//! [`AuditLayer`], meant to be the outermost layer, writes exactly one record per request,
//! including every request a layer further in rejected: who called (client address, TLS and
//! client-certificate identity, principal), what (route, method, path, model), with what
//! result (status, bytes, durations, and the decisions the other layers left in the
//! response's extensions: `Rejection`, `WafVerdict`, `RateLimitDecision`, `TokenUsage`).
//! Credentials are never written; queries and chosen headers are masked or dropped; subjects
//! and client addresses can be pseudonymised with HMAC-SHA256.
//!
//! Every record carries `seq`, `prev` and `hash` (SHA-256 over its canonical form), so the
//! records form a hash chain that continues across file rotation and restarts; checkpoints
//! signed with Ed25519 are written every N records or T seconds. `portcullis-audit verify`
//! checks a log and tells a crash's truncated tail from a modified, inserted, deleted or
//! reordered record, and reports records after the last signed checkpoint.
//!
//! The request path only captures and queues: a writer thread seals, writes and signs. The
//! queue is bounded; when it is full, `block` holds the response's end until there is room
//! (nothing is lost) and `drop` counts what it drops and writes a signed gap record. A sink
//! that fails either closes the gate (503 `audit.unavailable` until writing works again) or
//! lets requests through and counts the errors.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_audit::{Audit, AuditConfig, AuditLayer, FileSinkConfig, SinkConfig};
//!
//! let mut config = AuditConfig::default();
//! config.sink = SinkConfig::File(FileSinkConfig::new("/var/log/portcullis"));
//! config.checkpoint.signing_key = Some("/etc/portcullis/audit-key.pem".into());
//! let (audit, task) = Audit::start(config)?;
//! let layer = AuditLayer::new(audit);
//! // ... serve with `layer` outermost; at shutdown, after in-flight requests drained:
//! let stats = task.shutdown().await;
//! # let _ = (layer, stats);
//! # Ok(())
//! # }
//! ```

mod chain;
pub mod cli;
mod config;
mod event;
mod layer;
mod sink;
mod time;
pub mod verify;
mod writer;

pub use chain::{GENESIS, Signer, Verifier, private_key_pem, public_key_pem};
pub use config::{
    AuditConfig, CREDENTIAL_HEADERS, CREDENTIAL_PARAMS, CheckpointConfig, FileSinkConfig,
    FsyncPolicy, OnFull, OnSinkError, PseudonymizeConfig, QueryPolicy, QueueConfig,
    RedactionConfig, SinkConfig,
};
pub use layer::{
    AuditBody, AuditLayer, AuditService, BoxError, CountedBody, REQUEST_ID, ResponseFuture,
};
pub use sink::{FileSink, Sink, StdoutSink};
pub use writer::{Audit, AuditStats, AuditTask};
