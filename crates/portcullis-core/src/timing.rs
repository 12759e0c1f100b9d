//! Timing facts layers leave for the audit log.

use std::time::Duration;

/// How long the upstream took to send its response head, as the proxy measured it: a
/// response extension, read by the audit layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamLatency(pub Duration);
