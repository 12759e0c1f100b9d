//! Checking a log: the hash chain across files, each record's hash, and the checkpoints'
//! signatures.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::chain::{GENESIS, Sealed, Verifier, open};

/// The first thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A record's content does not match its hash (or a record was changed and its hash
    /// recomputed, which breaks the next record's `prev`).
    Modified {
        /// The record that was changed.
        seq: u64,
        /// Where the break shows.
        at: Place,
    },
    /// A record that does not belong in the chain.
    Inserted {
        /// The sequence number it claims.
        seq: u64,
        /// Where it is.
        at: Place,
    },
    /// Records missing from the chain.
    Deleted {
        /// The first missing sequence number.
        from: u64,
        /// The last missing sequence number.
        to: u64,
        /// Where the gap is.
        at: Place,
    },
    /// Records out of order.
    Reordered {
        /// The sequence number found.
        seq: u64,
        /// The one expected.
        expected: u64,
        /// Where.
        at: Place,
    },
    /// A checkpoint or gap record whose signature does not verify with the key.
    BadSignature {
        /// The record.
        seq: u64,
        /// Where.
        at: Place,
    },
    /// A line that is not a sealed record.
    Malformed {
        /// Where.
        at: Place,
    },
}

/// A line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Modified { seq, at } => write!(f, "MODIFIED: record {seq} was changed ({at})"),
            Self::Inserted { seq, at } => {
                write!(
                    f,
                    "INSERTED: a record claiming seq {seq} does not belong ({at})"
                )
            }
            Self::Deleted { from, to, at } if from == to => {
                write!(f, "DELETED: record {from} is missing ({at})")
            }
            Self::Deleted { from, to, at } => {
                write!(f, "DELETED: records {from} to {to} are missing ({at})")
            }
            Self::Reordered { seq, expected, at } => write!(
                f,
                "REORDERED: record {seq} where {expected} should be ({at})"
            ),
            Self::BadSignature { seq, at } => write!(
                f,
                "BAD SIGNATURE: checkpoint {seq} does not verify with this key ({at})"
            ),
            Self::Malformed { at } => write!(f, "MALFORMED: not a sealed record ({at})"),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Records that verified.
    pub records: u64,
    /// Of which request records.
    pub requests: u64,
    /// Of which checkpoints with a valid signature.
    pub checkpoints: u64,
    /// Of which gap records, and the events they say were dropped.
    pub gaps: u64,
    /// Events the gap records say were dropped.
    pub dropped: u64,
    /// The first and last sequence numbers.
    pub first_seq: Option<u64>,
    /// See `first_seq`.
    pub last_seq: Option<u64>,
    /// Whether the log starts at the chain's beginning (seq 1, genesis `prev`); otherwise it
    /// starts from the first record's `prev` (older files rotated away).
    pub from_genesis: bool,
    /// Records after the last signed checkpoint: their chain holds, but nothing signed
    /// vouches for them yet.
    pub unsigned_tail: u64,
    /// The last line ends without a newline: the writer stopped mid-record (a crash). The
    /// record being written had this sequence number.
    pub truncated_at: Option<u64>,
    /// Things that are not tampering but worth knowing (a torn line between files after a
    /// crash or a write error, records written twice after a write error).
    pub notes: Vec<String>,
    /// The first sign of tampering.
    pub finding: Option<Finding>,
}

impl Report {
    /// Whether the log verified with nothing to report: no tampering, no truncation, every
    /// record under a signed checkpoint.
    pub fn is_clean(&self) -> bool {
        self.finding.is_none() && self.truncated_at.is_none() && self.unsigned_tail == 0
    }
}

/// A parsed line with where it came from.
struct Line {
    place: Place,
    bytes: Vec<u8>,
    complete: bool,
    last_file: bool,
}

/// Reads the lines of the files in order, one ahead.
struct Lines {
    files: Vec<PathBuf>,
    index: usize,
    reader: Option<BufReader<File>>,
    line: u64,
    ahead: Option<Vec<u8>>,
    bytes: u64,
}

impl Lines {
    fn raw(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        self.bytes += buf.len() as u64;
        Ok(Some(buf))
    }

    fn next(&mut self) -> io::Result<Option<Line>> {
        loop {
            if self.reader.is_none() {
                let Some(path) = self.files.get(self.index) else {
                    return Ok(None);
                };
                self.reader = Some(BufReader::with_capacity(1 << 20, File::open(path)?));
                self.line = 0;
                self.ahead = self.raw()?;
            }
            let Some(mut bytes) = self.ahead.take() else {
                self.reader = None;
                self.index += 1;
                continue;
            };
            self.ahead = self.raw()?;
            self.line += 1;
            let complete = bytes.last() == Some(&b'\n');
            if complete {
                bytes.pop();
            }
            return Ok(Some(Line {
                place: Place {
                    file: self.files.get(self.index).cloned().unwrap_or_default(),
                    line: self.line,
                },
                bytes,
                complete,
                last_file: self.index + 1 == self.files.len(),
            }));
        }
    }
}

/// Orders log files by the sequence number of their first record (then by name).
fn order(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut keyed: Vec<(u64, PathBuf)> = paths
        .iter()
        .map(|p| {
            let first = File::open(p)
                .ok()
                .and_then(|f| {
                    let mut line = Vec::new();
                    BufReader::new(f).read_until(b'\n', &mut line).ok()?;
                    let line = line.strip_suffix(b"\n").unwrap_or(&line).to_vec();
                    open(&line).map(|s| s.seq)
                })
                .unwrap_or(u64::MAX);
            (first, p.clone())
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// Verifies the log in `paths` (in any order: they are ordered by their first record), with
/// the checkpoints' public key when given.
///
/// # Errors
///
/// A file cannot be read.
pub fn verify(paths: &[PathBuf], key: Option<&Verifier>) -> io::Result<Report> {
    let files = order(paths);
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let mut lines = Lines {
        files,
        index: 0,
        reader: None,
        line: 0,
        ahead: None,
        bytes: 0,
    };
    // The last good record: its seq, hash and prev.
    let mut last: Option<(u64, [u8; 32], [u8; 32])> = None;
    // After a torn line between files: the hashes written before it, which a retry may
    // have written again.
    let mut rewritten: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut current_file: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut file_of_last = PathBuf::new();
    while let Some(line) = lines.next()? {
        if line.place.file != file_of_last {
            file_of_last = line.place.file.clone();
            current_file.clear();
        }
        if !line.complete {
            let next_seq = last.map_or(1, |(s, _, _)| s + 1);
            if line.last_file {
                report.truncated_at = Some(next_seq);
            } else {
                report.notes.push(format!(
                    "{}: torn last line (record {next_seq} was being written when the writer stopped); the chain continues in the next file",
                    line.place
                ));
                rewritten = std::mem::take(&mut current_file);
            }
            continue;
        }
        let Some(rec) = open(&line.bytes) else {
            report.finding = Some(Finding::Malformed { at: line.place });
            break;
        };
        // The first record anchors the chain; each later one must follow the last.
        let follows = match last {
            None => {
                report.first_seq = Some(rec.seq);
                report.from_genesis = rec.seq == 1 && rec.prev == GENESIS;
                rec.intact
            }
            Some((seq, hash, _)) => rec.intact && rec.seq == seq + 1 && rec.prev == hash,
        };
        if follows {
            if let Err(f) = accept(&rec, &line, key, &mut report) {
                report.finding = Some(f);
                break;
            }
            current_file.insert(rec.seq, rec.hash);
            last = Some((rec.seq, rec.hash, rec.prev));
            continue;
        }
        let Some((seq, hash, prev)) = last else {
            report.finding = Some(Finding::Modified {
                seq: rec.seq,
                at: line.place,
            });
            break;
        };
        let expected = seq + 1;
        // A record written again after a write error: the same record, byte for byte.
        if rec.intact && rewritten.get(&rec.seq) == Some(&rec.hash) {
            report.notes.push(format!(
                "{}: record {} written again after a write error",
                line.place, rec.seq
            ));
            continue;
        }
        let next = lines.next()?;
        let next_rec = next.as_ref().and_then(|n| open(&n.bytes));
        let at = line.place.clone();
        let finding = if !rec.intact {
            Finding::Modified { seq: rec.seq, at }
        } else if rec.seq == expected + 1 && next_rec.as_ref().is_some_and(|n| n.seq == expected) {
            Finding::Reordered {
                seq: rec.seq,
                expected,
                at,
            }
        } else if next_rec
            .as_ref()
            .is_some_and(|n| n.intact && n.seq == expected && n.prev == hash)
        {
            Finding::Inserted { seq: rec.seq, at }
        } else if rec.seq == seq && rec.prev == prev {
            // Two records claim the same place: the earlier one was inserted.
            Finding::Inserted { seq, at }
        } else if rec.seq > expected {
            Finding::Deleted {
                from: expected,
                to: rec.seq - 1,
                at,
            }
        } else if rec.seq == expected {
            // Its `prev` is not the hash of the record before: that one was changed (and
            // its own hash recomputed), or this one was put in its place.
            Finding::Modified { seq, at }
        } else {
            Finding::Reordered {
                seq: rec.seq,
                expected,
                at,
            }
        };
        report.finding = Some(finding);
        break;
    }
    report.bytes = lines.bytes;
    report.last_seq = last.map(|(s, _, _)| s);
    Ok(report)
}

/// Counts a record that chained correctly; checks its signature.
fn accept(
    rec: &Sealed<'_>,
    line: &Line,
    key: Option<&Verifier>,
    report: &mut Report,
) -> Result<(), Finding> {
    report.records += 1;
    report.unsigned_tail += 1;
    match rec.kind {
        "request" => report.requests += 1,
        "gap" => {
            report.gaps += 1;
            report.dropped += number_after(&line.bytes, b"\"dropped\":").unwrap_or(0);
        }
        _ => {}
    }
    let (Some(sig), Some(key)) = (&rec.sig, key) else {
        return Ok(());
    };
    if !key.verify(&rec.hash, sig) {
        return Err(Finding::BadSignature {
            seq: rec.seq,
            at: line.place.clone(),
        });
    }
    if rec.kind == "checkpoint" {
        report.checkpoints += 1;
        report.unsigned_tail = 0;
    }
    Ok(())
}

fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = line
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The log files of a directory (`*.jsonl`), for `verify DIR`.
///
/// # Errors
///
/// The directory cannot be read.
pub fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}
