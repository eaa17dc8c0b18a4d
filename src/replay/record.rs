//! The recording format: JSON Lines, one MQTT message a line, as the scenario
//! library stores them (gzipped: `.jsonl.gz`) and as a gateway's `[capture]` writes
//! them (`.jsonl`).

use super::ReplayError;
use std::io::BufRead;
use std::path::{Path, PathBuf};

pub use crate::ingest::recording::Record;

/// The records of one file, in file order, read line by line (a week of a clinic
/// is gigabytes: nothing is held but the line being read).
pub fn records(
    path: &Path,
) -> Result<impl Iterator<Item = Result<Record, ReplayError>>, ReplayError> {
    let file = std::fs::File::open(path).map_err(|e| ReplayError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let path: PathBuf = path.to_path_buf();
    let raw: Box<dyn std::io::Read + Send> = if is_gzip(&path) {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(file)
    };
    let lines = std::io::BufReader::with_capacity(1 << 16, raw).lines();
    Ok(lines.enumerate().filter_map(move |(i, line)| match line {
        Ok(line) if line.trim().is_empty() => None,
        Ok(line) => Some(
            serde_json::from_str::<Record>(&line).map_err(|e| ReplayError::Line {
                path: path.clone(),
                line: i + 1,
                message: e.to_string(),
            }),
        ),
        Err(e) => Some(Err(ReplayError::Read {
            path: path.clone(),
            source: e,
        })),
    }))
}

fn is_gzip(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "gz")
}

/// Whether `path` names a recording: `*.jsonl`, or `*.jsonl.gz`.
pub fn is_recording(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
}

/// `x.jsonl` and `x.jsonl.gz` both give `x`.
pub fn stem(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.strip_suffix(".gz").unwrap_or(name);
    name.strip_suffix(".jsonl").unwrap_or(name).to_string()
}

/// The recordings named by `inputs`: files as given, directories by their recordings
/// (`*.jsonl`, `*.jsonl.gz`) in name order.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| ReplayError::Read {
                path: input.clone(),
                source: e,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_recording(p))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(input.clone());
        }
    }
    if out.is_empty() {
        return Err(ReplayError::NoInput);
    }
    Ok(out)
}
