//! Where sealed lines go: standard output, or rotating files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::FileSinkConfig;

/// A destination for sealed lines. The writer calls it from its own thread, in order.
///
/// A sink may buffer lines until [`Sink::flush`]; a failed flush must keep the buffered lines
/// (to be written again by the next flush) and leave no partial line behind where it can
/// avoid it.
pub trait Sink: Send {
    /// Takes one complete line (newline included), record `seq`.
    ///
    /// # Errors
    ///
    /// The line was not taken (the writer offers it again later).
    fn write_line(&mut self, seq: u64, line: &[u8]) -> io::Result<()>;

    /// Writes what is buffered, and with `sync` forces it to stable storage.
    ///
    /// # Errors
    ///
    /// The data could not be written or synced; it stays buffered.
    fn flush(&mut self, sync: bool) -> io::Result<()>;

    /// The last complete line a previous run left, to continue its chain.
    ///
    /// # Errors
    ///
    /// Earlier output exists but cannot be read.
    fn last_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// JSON Lines on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink {
    buf: Vec<u8>,
}

impl Sink for StdoutSink {
    fn write_line(&mut self, _seq: u64, line: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(line);
        Ok(())
    }

    fn flush(&mut self, _sync: bool) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(&self.buf)?;
        self.buf.clear();
        out.flush()
    }
}

/// Rotating files `DIR/PREFIX-<first seq, 20 digits>.jsonl`. A run never appends to an
/// earlier run's file: it starts a new one, whose first record continues the chain.
/// Rotation happens between records: a file is closed when the next record would take it
/// past `maxBytes`, or once it is `maxAgeSeconds` old.
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
    current: Option<Open>,
    /// Lines taken but not yet written, and the first one's record number.
    buf: Vec<u8>,
    buf_seq: u64,
    /// Sync a file before closing it at rotation.
    sync_on_rotate: bool,
}

#[derive(Debug)]
struct Open {
    file: File,
    /// Bytes written and accepted.
    committed: u64,
    opened: Instant,
}

impl FileSink {
    /// Files as `config` says; the directory is created if missing.
    ///
    /// # Errors
    ///
    /// The directory cannot be created.
    pub fn new(config: FileSinkConfig, sync_on_rotate: bool) -> io::Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        Ok(Self {
            config,
            current: None,
            buf: Vec::new(),
            buf_seq: 0,
            sync_on_rotate,
        })
    }

    /// The log files in `dir` with `prefix`, oldest first.
    ///
    /// # Errors
    ///
    /// The directory cannot be read.
    pub fn files(dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.strip_prefix(prefix)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|r| r.ends_with(".jsonl"))
                })
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn open_new(&mut self, seq: u64) -> io::Result<()> {
        let base = format!("{}-{seq:020}", self.config.prefix);
        let mut n = 0;
        let file = loop {
            let name = if n == 0 {
                format!("{base}.jsonl")
            } else {
                format!("{base}-{n}.jsonl")
            };
            match OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.config.dir.join(name))
            {
                Ok(f) => break f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        };
        self.current = Some(Open {
            file,
            committed: 0,
            opened: Instant::now(),
        });
        self.retain()
    }

    /// Writes the buffer to the current file (opening one if needed). On failure the file is
    /// cut back to its last whole record and the buffer kept; if even that fails, the file is
    /// abandoned and the next attempt starts a new one.
    fn write_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.current.is_none() {
            self.open_new(self.buf_seq)?;
        }
        let open = self
            .current
            .as_mut()
            .ok_or_else(|| io::Error::other("no open file"))?;
        match open.file.write_all(&self.buf) {
            Ok(()) => {
                open.committed += self.buf.len() as u64;
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                if open.file.set_len(open.committed).is_err() {
                    self.current = None;
                }
                Err(e)
            }
        }
    }

    fn close(&mut self) -> io::Result<()> {
        self.write_buf()?;
        if let Some(open) = self.current.take()
            && self.sync_on_rotate
            && let Err(e) = open.file.sync_data()
        {
            self.current = Some(open);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes the oldest files beyond `retainFiles`.
    fn retain(&self) -> io::Result<()> {
        if self.config.retain_files == 0 {
            return Ok(());
        }
        let files = Self::files(&self.config.dir, &self.config.prefix)?;
        let excess = files.len().saturating_sub(self.config.retain_files);
        for old in files.iter().take(excess) {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn write_line(&mut self, seq: u64, line: &[u8]) -> io::Result<()> {
        let size = self.current.as_ref().map_or(0, |o| o.committed) + self.buf.len() as u64;
        let full = size > 0
            && (size + line.len() as u64 > self.config.max_bytes
                || self.current.as_ref().is_some_and(|o| {
                    o.opened.elapsed() >= Duration::from_secs(self.config.max_age_seconds)
                }));
        if full {
            self.close()?;
        }
        if self.buf.is_empty() {
            self.buf_seq = seq;
        }
        self.buf.extend_from_slice(line);
        Ok(())
    }

    fn flush(&mut self, sync: bool) -> io::Result<()> {
        self.write_buf()?;
        if sync && let Some(open) = self.current.as_ref() {
            open.file.sync_data()?;
        }
        Ok(())
    }

    fn last_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        // The newest file with a complete line (a file may hold only a torn first line).
        for path in Self::files(&self.config.dir, &self.config.prefix)?
            .iter()
            .rev()
        {
            if let Some(line) = last_complete_line(path)? {
                return Ok(Some(line));
            }
        }
        Ok(None)
    }
}

/// The last newline-terminated line of a file, read from its end.
fn last_complete_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut window = 64 * 1024_u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        Read::by_ref(&mut file)
            .take(len - start)
            .read_to_end(&mut buf)?;
        // Drop a torn tail, then take the line before the last newline.
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                return Ok(None);
            }
            window *= 4;
            continue;
        };
        let body = buf.get(..end).unwrap_or_default();
        match body.iter().rposition(|b| *b == b'\n') {
            Some(nl) => return Ok(Some(body.get(nl + 1..).unwrap_or_default().to_vec())),
            None if start == 0 => return Ok(Some(body.to_vec())),
            None => window *= 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_complete_line_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"one\ntwo\nthr").unwrap();
        assert_eq!(last_complete_line(&p).unwrap().unwrap(), b"two");
        std::fs::write(&p, b"one\n").unwrap();
        assert_eq!(last_complete_line(&p).unwrap().unwrap(), b"one");
        std::fs::write(&p, b"torn").unwrap();
        assert_eq!(last_complete_line(&p).unwrap(), None);
        let long = "y".repeat(200_000);
        std::fs::write(&p, format!("{long}\n{long}\nz")).unwrap();
        assert_eq!(last_complete_line(&p).unwrap().unwrap(), long.as_bytes());
    }

    #[test]
    fn rotation_by_size_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = FileSinkConfig::new(dir.path());
        config.max_bytes = 22;
        config.retain_files = 2;
        let mut sink = FileSink::new(config, false).unwrap();
        for seq in 1..=6 {
            sink.write_line(seq, b"0123456789\n").unwrap();
        }
        sink.flush(false).unwrap();
        let files = FileSink::files(dir.path(), "audit").unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit-00000000000000000003.jsonl",
                "audit-00000000000000000005.jsonl"
            ]
        );
        assert_eq!(sink.last_line().unwrap().unwrap(), b"0123456789");
    }
}
