//! `[capture]`: every message the gateway applies, written to rotating JSON Lines
//! files in the recording format of `vitalgate replay` (see [`Record`]), so that a
//! clinic can replay its own week against a proposed limit set before go-live.
//!
//! Captured files hold patient ids: the directory is created `0700` and every file
//! `0600` (owner only). Writing happens on a thread of its own, fed by a bounded
//! channel: ingest never waits on the disk. When the disk falls behind by
//! `capture.queue_capacity` messages, messages are dropped from the capture (never
//! from the gateway) and counted in `vitalgate_capture_dropped_total`.

use super::recording::Record;
use crate::config::CaptureConfig;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture.dir {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the capture writer: {0}")]
    Thread(std::io::Error),
}

/// The ingest side of the capture.
pub struct Capture {
    tx: Option<SyncSender<Record>>,
    writer: Option<JoinHandle<()>>,
    dropped: metrics::Counter,
}

impl Capture {
    /// Create the directory (owner only) and start the writer.
    pub fn start(
        config: &CaptureConfig,
        start_ms: u64,
        dropped: metrics::Counter,
    ) -> Result<Capture, CaptureError> {
        make_private_dir(&config.dir).map_err(|source| CaptureError::Dir {
            path: config.dir.clone(),
            source,
        })?;
        let (tx, rx) = sync_channel(config.queue_capacity);
        let files = Files {
            dir: config.dir.clone(),
            prefix: format!("vitalgate-{start_ms:013}"),
            rotate_bytes: config.rotate_bytes,
            max_files: config.max_files,
            next: 0,
        };
        let writer = std::thread::Builder::new()
            .name("vitalgate-capture".into())
            .spawn(move || write_all(rx, files))
            .map_err(CaptureError::Thread)?;
        Ok(Capture {
            tx: Some(tx),
            writer: Some(writer),
            dropped,
        })
    }

    /// Queue one message received at gateway time `at_ms`. Payloads that are not
    /// UTF-8 (refused by the gateway anyway) are not captured.
    pub fn record(&self, at_ms: u64, topic: &str, payload: &[u8], retain: bool) {
        let (Some(tx), Ok(payload)) = (&self.tx, std::str::from_utf8(payload)) else {
            return;
        };
        let record = Record {
            at_ms,
            topic: topic.to_string(),
            payload: payload.to_string(),
            retain,
            delivered_ms: None,
        };
        // Full: the disk is behind. Disconnected: the writer stopped on a disk error
        // (logged once by the writer). Either way the line is lost, and counted.
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(record) {
            self.dropped.increment(1);
        }
    }

    /// Write out what is queued and stop the writer. Blocks until it has: call it
    /// off the runtime's workers.
    pub fn finish(mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Without `finish`, the writer still writes out what is queued, unwaited.
        drop(self.tx.take());
    }
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// The rotating files: `{prefix}-{n:05}.jsonl`, so names sort in time order.
struct Files {
    dir: PathBuf,
    prefix: String,
    rotate_bytes: u64,
    max_files: usize,
    next: u32,
}

impl Files {
    fn open_next(&mut self) -> std::io::Result<BufWriter<File>> {
        let path = self
            .dir
            .join(format!("{}-{:05}.jsonl", self.prefix, self.next));
        self.next += 1;
        let mut options = OpenOptions::new();
        options.create_new(true).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        self.prune();
        Ok(BufWriter::with_capacity(1 << 16, file))
    }

    /// Keep the newest `max_files` capture files (0: all).
    fn prune(&self) {
        if self.max_files == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_capture_file)
            })
            .collect();
        files.sort();
        let excess = files.len().saturating_sub(self.max_files);
        for old in &files[..excess] {
            if let Err(e) = std::fs::remove_file(old) {
                tracing::warn!(file = %old.display(), error = %e, "cannot remove an old capture file");
            }
        }
    }
}

/// Whether `name` is a capture file as [`Files`] names them
/// (`vitalgate-{13 digits}-{5 digits}.jsonl`): pruning removes nothing else.
fn is_capture_file(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("vitalgate-")
        .and_then(|r| r.strip_suffix(".jsonl"))
    else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    matches!(rest.split_once('-'), Some((start, n)) if digits(start, 13) && digits(n, 5))
}

/// The writer thread: one line a message, flushed whenever the queue is empty,
/// a new file past `rotate_bytes`.
fn write_all(rx: Receiver<Record>, mut files: Files) {
    let mut out: Option<(BufWriter<File>, u64)> = None;
    let mut line = Vec::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            line.clear();
            if serde_json::to_writer(&mut line, &record).is_err() {
                next = rx.try_recv().ok();
                continue;
            }
            line.push(b'\n');
            if out.as_ref().is_none_or(|(_, n)| *n >= files.rotate_bytes) {
                if let Some((mut w, _)) = out.take() {
                    let _ = w.flush();
                }
                match files.open_next() {
                    Ok(w) => out = Some((w, 0)),
                    Err(e) => {
                        tracing::error!(dir = %files.dir.display(), error = %e, "cannot open a capture file; capture stopped");
                        return;
                    }
                }
            }
            if let Some((w, n)) = out.as_mut() {
                if let Err(e) = w.write_all(&line) {
                    tracing::error!(error = %e, "capture write failed; capture stopped");
                    return;
                }
                *n += line.len() as u64;
            }
            next = rx.try_recv().ok();
        }
        if let Some((w, _)) = out.as_mut() {
            if let Err(e) = w.flush() {
                tracing::error!(error = %e, "capture write failed; capture stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, rotate_bytes: u64, max_files: usize) -> CaptureConfig {
        CaptureConfig {
            enabled: true,
            dir: dir.to_path_buf(),
            rotate_bytes,
            max_files,
            queue_capacity: 1024,
        }
    }

    fn temp_dir() -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!("vitalgate-capture-{}-{nanos}", std::process::id()))
    }

    #[test]
    fn only_capture_files_are_pruned() {
        assert!(is_capture_file("vitalgate-1780000000000-00012.jsonl"));
        assert!(!is_capture_file("vitalgate-export.jsonl"));
        assert!(!is_capture_file("vitalgate-1780000000000-00012.jsonl.gz"));
        assert!(!is_capture_file("vitalgate-178000000000-00012.jsonl"));
    }

    #[test]
    fn messages_are_written_in_order_to_private_rotating_files() {
        let dir = temp_dir().join("nested");
        let capture = Capture::start(
            &config(&dir, 300, 3),
            1_780_000_000_000,
            metrics::Counter::noop(),
        )
        .unwrap();
        for i in 0..20u64 {
            let payload = format!(r#"{{"seq":{i},"ts":{},"hr":70}}"#, 1_780_000_000_000 + i);
            capture.record(
                1_780_000_000_000 + i,
                "clinic/n/chair/1/vitals",
                payload.as_bytes(),
                false,
            );
        }
        capture.record(1, "clinic/n/chair/1/vitals", &[0xff, 0xfe], false);
        capture.finish();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3, "the oldest files are pruned");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert!(files.iter().all(|f| mode(f) == 0o600));
        }
        let seqs: Vec<u64> = files
            .iter()
            .flat_map(|f| crate::replay::record::records(f).unwrap())
            .map(|r| {
                let r = r.unwrap();
                let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect();
        assert!(!seqs.is_empty());
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(*seqs.last().unwrap(), 19);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
