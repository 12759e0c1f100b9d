//! The writer: one thread that seals events into the chain, writes them, and signs
//! checkpoints; and [`Audit`], the request path's handle to it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use portcullis_core::ConfigError;
use tokio::sync::{Semaphore, oneshot};

use crate::chain::{Chain, Signer, open};
use crate::config::{AuditConfig, FsyncPolicy, OnFull, OnSinkError, SinkConfig};
use crate::event::{Captured, Pseudonyms, request_record};
use crate::sink::{FileSink, Sink, StdoutSink};
use crate::time::rfc3339;

/// Messages to the writer.
pub(crate) enum Msg {
    Event(Box<Captured>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<AuditStats>),
}

/// Counters of an audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Records written (events, checkpoints, gap and start records).
    pub written: u64,
    /// Events dropped (queue full under `drop`, or the log shut down).
    pub dropped: u64,
    /// Failed sink writes.
    pub write_errors: u64,
    /// Events waiting in the queue.
    pub queued: u64,
    /// Whether the sink is writable.
    pub healthy: bool,
}

pub(crate) struct Shared {
    pub(crate) config: AuditConfig,
    /// The headers recorded, parsed once, and whether each is masked.
    pub(crate) headers: Vec<(http::HeaderName, bool)>,
    /// Request ids made here: a random prefix per log, then a counter.
    id_prefix: u64,
    id_counter: AtomicU64,
    healthy: AtomicBool,
    /// Dropped events not yet reported by a gap record.
    unreported: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
}

/// The queue between the request path and the writer. Producers do not wake the writer for
/// each event (a futex wake costs more than the rest of the request path): the writer takes
/// what has gathered every few milliseconds, or sooner when the queue fills up or someone
/// waits for a flush.
pub(crate) struct Queue {
    items: Mutex<VecDeque<Msg>>,
    ready: Condvar,
    /// One permit per event the queue may hold; the writer returns them as it writes.
    pub(crate) permits: Arc<Semaphore>,
    capacity: usize,
    /// Wake the writer once this many events wait.
    wake_at: usize,
}

impl Queue {
    /// Adds a message whose permit (for events) was taken.
    pub(crate) fn push(&self, msg: Msg) {
        let urgent = !matches!(msg, Msg::Event(_));
        let len = {
            let Ok(mut items) = self.items.lock() else {
                return;
            };
            items.push_back(msg);
            items.len()
        };
        if urgent || len == self.wake_at {
            self.ready.notify_one();
        }
    }
}

/// The request path's handle to an audit log (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: Arc<Queue>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The writer thread; [`AuditTask::shutdown`] flushes every accepted event and writes a final
/// checkpoint.
#[derive(Debug)]
pub struct AuditTask {
    audit: Audit,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Audit {
    /// Starts an audit log with the sink `config` names.
    ///
    /// # Errors
    ///
    /// An invalid configuration, an unreadable key, a sink that cannot be opened, or a
    /// previous run's log that cannot be read.
    pub fn start(config: AuditConfig) -> Result<(Self, AuditTask), ConfigError> {
        let sink: Box<dyn Sink> = match &config.sink {
            SinkConfig::Stdout => Box::new(StdoutSink::default()),
            SinkConfig::File(f) => Box::new(
                FileSink::new(f.clone(), config.fsync != FsyncPolicy::None).map_err(|e| {
                    ConfigError::new(
                        "sink.dir",
                        format!("{}: {e}", f.dir.display()),
                        "point it at a writable directory",
                    )
                })?,
            ),
        };
        Self::with_sink(config, sink)
    }

    /// Starts an audit log writing to `sink` (the configured sink is ignored).
    ///
    /// # Errors
    ///
    /// As [`Audit::start`].
    pub fn with_sink(
        config: AuditConfig,
        mut sink: Box<dyn Sink>,
    ) -> Result<(Self, AuditTask), ConfigError> {
        config.validate()?;
        let signer = config
            .checkpoint
            .signing_key
            .as_deref()
            .map(Signer::from_pem_file)
            .transpose()
            .map_err(|e| {
                ConfigError::new(
                    "checkpoint.signingKey",
                    e.to_string(),
                    "use an Ed25519 PKCS#8 PEM key (portcullis-audit keygen)",
                )
            })?;
        let pseudonyms = match &config.redaction.pseudonymize {
            Some(p) => {
                let key = std::fs::read(&p.key_file).map_err(|e| {
                    ConfigError::new(
                        "redaction.pseudonymize.keyFile",
                        format!("{}: {e}", p.key_file.display()),
                        "point it at a readable key file",
                    )
                })?;
                if key.len() < 32 {
                    return Err(ConfigError::new(
                        "redaction.pseudonymize.keyFile",
                        format!("the key has {} bytes", key.len()),
                        "use at least 32 random bytes",
                    ));
                }
                Some(Pseudonyms::new(&key, p.subject, p.client_ip))
            }
            None => None,
        };
        let previous = sink.last_line().map_err(|e| {
            ConfigError::new(
                "sink",
                format!("cannot read the previous log: {e}"),
                "check the directory's permissions",
            )
        })?;
        let (chain, resumed) = match previous.as_deref().and_then(open) {
            Some(last) if last.intact => (
                Chain {
                    next: last.seq + 1,
                    prev: last.hash,
                },
                Resumed::Continued,
            ),
            Some(_) => (Chain::new(), Resumed::Unreadable),
            None if previous.is_some() => (Chain::new(), Resumed::Unreadable),
            None => (Chain::new(), Resumed::Fresh),
        };
        let capacity = config.queue.capacity.min(Semaphore::MAX_PERMITS);
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            wake_at: (capacity / 2).clamp(1, 256),
        });
        let mut prefix = [0u8; 8];
        // The system RNG does not fail in practice; ids stay unique through the counter.
        let _ = aws_lc_rs::rand::fill(&mut prefix);
        let shared = Arc::new(Shared {
            headers: crate::event::recorded_headers(&config),
            id_prefix: u64::from_be_bytes(prefix),
            id_counter: AtomicU64::new(0),
            config,
            healthy: AtomicBool::new(true),
            unreported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        });
        let writer = Writer {
            sink,
            chain,
            signer,
            pseudonyms,
            shared: shared.clone(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            pending: VecDeque::new(),
            stalled: false,
            body: Vec::with_capacity(1024),
            line: Vec::with_capacity(1024),
        };
        let thread = std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn({
                let queue = queue.clone();
                move || writer.run(&queue, resumed)
            })
            .map_err(|e| {
                ConfigError::new("audit", format!("cannot start the writer: {e}"), "retry")
            })?;
        let audit = Self { shared, queue };
        Ok((
            audit.clone(),
            AuditTask {
                audit,
                thread: Some(thread),
            },
        ))
    }

    /// The counters.
    pub fn stats(&self) -> AuditStats {
        let s = &self.shared;
        AuditStats {
            written: s.written.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            queued: self
                .queue
                .capacity
                .saturating_sub(self.queue.permits.available_permits()) as u64,
            healthy: s.healthy.load(Ordering::Relaxed),
        }
    }

    /// Waits until every event queued before this call is written and flushed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        self.queue.push(Msg::Flush(done));
        let _ = wait.await;
    }

    /// A fresh request id: 32 hex digits, a random per-log prefix and a counter.
    pub(crate) fn new_id(&self) -> http::HeaderValue {
        let n = self.shared.id_counter.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        let digits = self
            .shared
            .id_prefix
            .to_be_bytes()
            .into_iter()
            .chain(n.to_be_bytes());
        for (pair, byte) in text.chunks_exact_mut(2).zip(digits) {
            pair.copy_from_slice(&crate::chain::hex_pair(byte));
        }
        http::HeaderValue::from_bytes(&text).unwrap_or_else(|_| http::HeaderValue::from_static("0"))
    }

    /// Whether new requests must be refused: the sink is failing and the policy fails closed.
    pub(crate) fn refuses(&self) -> bool {
        self.shared.config.on_sink_error == OnSinkError::FailClosed
            && !self.shared.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn blocks(&self) -> bool {
        self.shared.config.queue.on_full == OnFull::Block
    }

    /// Queues an event without waiting; a full queue (or a closed log) drops and counts it.
    pub(crate) fn try_record(&self, event: Box<Captured>) {
        match self.queue.permits.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.queue.push(Msg::Event(event));
            }
            Err(_) => self.count_drop(),
        }
    }

    pub(crate) fn count_drop(&self) {
        self.shared.unreported.fetch_add(1, Ordering::Relaxed);
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl AuditTask {
    /// The log's handle.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Writes every event queued before this call, a final checkpoint, and syncs; events
    /// recorded afterwards are dropped (and counted).
    pub async fn shutdown(mut self) -> AuditStats {
        let (done, wait) = oneshot::channel();
        self.audit.queue.push(Msg::Shutdown(done));
        let stats = wait.await.unwrap_or_else(|_| self.audit.stats());
        if let Some(thread) = self.thread.take() {
            // It has answered: all that is left is returning, so this does not wait.
            let _ = thread.join();
        }
        stats
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Resumed {
    Fresh,
    Continued,
    Unreadable,
}

struct Writer {
    sink: Box<dyn Sink>,
    chain: Chain,
    signer: Option<Signer>,
    pseudonyms: Option<Pseudonyms>,
    shared: Arc<Shared>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// Sealed lines the sink has not taken yet (it failed), in order.
    pending: VecDeque<(u64, Vec<u8>)>,
    /// The sink failed: nothing new is taken until a retry succeeds.
    stalled: bool,
    /// The buffers a record's body and its sealed line are made in, reused.
    body: Vec<u8>,
    line: Vec<u8>,
}

/// How long the writer lets events gather before it looks again.
const GATHER: Duration = Duration::from_millis(5);
/// How often a failing sink is retried.
const RETRY: Duration = Duration::from_millis(100);

impl Writer {
    fn run(mut self, queue: &Queue, resumed: Resumed) {
        let start = format!(
            r#"{{"kind":"start","time":"{}","version":"{}","chain":"{}"}}"#,
            rfc3339(std::time::SystemTime::now()),
            env!("CARGO_PKG_VERSION"),
            match resumed {
                Resumed::Fresh => "new",
                Resumed::Continued => "continued",
                Resumed::Unreadable => "restarted: the previous log's last record is unreadable",
            }
        );
        self.seal_and_write(start.as_bytes(), false);
        self.flush(false);
        let every = Duration::from_secs(self.shared.config.checkpoint.every_seconds);
        let mut batch = VecDeque::new();
        loop {
            if self.stalled {
                // The sink is failing: stop taking events (the queue applies its policy)
                // and retry until it works.
                std::thread::sleep(RETRY);
                self.retry();
                continue;
            }
            {
                let Ok(mut items) = queue.items.lock() else {
                    return;
                };
                if items.is_empty() {
                    items = match queue.ready.wait_timeout(items, GATHER) {
                        Ok((items, _)) => items,
                        Err(_) => return,
                    };
                }
                std::mem::swap(&mut *items, &mut batch);
            }
            while let Some(msg) = batch.pop_front() {
                match msg {
                    Msg::Event(event) => {
                        self.event(&event);
                        // Its memory is free again: room for a new event (before any flush
                        // answered later in the batch).
                        queue.permits.add_permits(1);
                    }
                    Msg::Flush(done) => {
                        self.flush(false);
                        let _ = done.send(());
                    }
                    Msg::Shutdown(done) => {
                        queue.permits.close();
                        // Everything accepted before the close is written too.
                        let rest = queue
                            .items
                            .lock()
                            .map(|mut items| std::mem::take(&mut *items))
                            .unwrap_or_default();
                        for msg in batch.drain(..).chain(rest) {
                            match msg {
                                Msg::Event(event) => self.event(&event),
                                Msg::Flush(d) => {
                                    let _ = d.send(());
                                }
                                Msg::Shutdown(d) => {
                                    let _ = d.send(AuditStats::default());
                                }
                            }
                        }
                        self.finish();
                        let _ = done.send(self.stats());
                        return;
                    }
                }
            }
            if self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= every {
                self.checkpoint(false);
            }
            self.flush(false);
        }
    }

    fn stats(&self) -> AuditStats {
        let s = &self.shared;
        AuditStats {
            written: s.written.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            queued: 0,
            healthy: s.healthy.load(Ordering::Relaxed),
        }
    }

    fn event(&mut self, event: &Captured) {
        let dropped = self.shared.unreported.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let gap = format!(
                r#"{{"kind":"gap","time":"{}","dropped":{dropped}}}"#,
                rfc3339(std::time::SystemTime::now())
            );
            self.seal_and_write(gap.as_bytes(), true);
        }
        let mut body = std::mem::take(&mut self.body);
        request_record(
            event,
            self.shared.config.redaction.query,
            self.pseudonyms.as_ref(),
            &mut body,
        );
        self.seal_and_write(&body, false);
        self.body = body;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.shared.config.checkpoint.every_records {
            self.checkpoint(false);
        }
    }

    fn checkpoint(&mut self, last: bool) {
        let key = self
            .signer
            .as_ref()
            .map(|s| format!(r#","key_id":"{}""#, s.key_id()))
            .unwrap_or_default();
        let body = format!(
            r#"{{"kind":"checkpoint","time":"{}","records":{}{key}{}}}"#,
            rfc3339(std::time::SystemTime::now()),
            self.since_checkpoint,
            if last { r#","final":true"# } else { "" },
        );
        self.seal_and_write(body.as_bytes(), true);
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if self.shared.config.fsync != FsyncPolicy::None {
            self.flush(true);
        }
    }

    fn seal_and_write(&mut self, body: &[u8], signed: bool) {
        let signer = if signed { self.signer.as_ref() } else { None };
        let seq = self.chain.next;
        self.chain.seal_into(body, signer, &mut self.line);
        if self.stalled {
            self.pending.push_back((seq, self.line.clone()));
            return;
        }
        match self.sink.write_line(seq, &self.line) {
            Ok(()) => {
                self.shared.written.fetch_add(1, Ordering::Relaxed);
                if self.shared.config.fsync == FsyncPolicy::PerRecord {
                    self.flush(true);
                }
            }
            Err(_) => {
                self.failed();
                self.pending.push_back((seq, self.line.clone()));
            }
        }
    }

    fn failed(&mut self) {
        self.stalled = true;
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.healthy.store(false, Ordering::Relaxed);
    }

    fn flush(&mut self, sync: bool) {
        if self.stalled {
            return;
        }
        if self.sink.flush(sync).is_err() {
            self.failed();
        }
    }

    /// Writes what the sink holds and the pending lines again; once all are written, the
    /// sink is healthy.
    fn retry(&mut self) {
        let sync = self.shared.config.fsync != FsyncPolicy::None;
        if self.sink.flush(sync).is_err() {
            self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        while let Some((seq, line)) = self.pending.front() {
            if self.sink.write_line(*seq, line).is_err() {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.shared.written.fetch_add(1, Ordering::Relaxed);
            self.pending.pop_front();
        }
        if self.sink.flush(sync).is_err() {
            self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stalled = false;
        self.shared.healthy.store(true, Ordering::Relaxed);
    }

    fn finish(&mut self) {
        self.checkpoint(true);
        // A failing sink gets a few more tries before the writer gives up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.stalled && Instant::now() < deadline {
            std::thread::sleep(RETRY);
            self.retry();
        }
        self.flush(self.shared.config.fsync != FsyncPolicy::None);
    }
}
