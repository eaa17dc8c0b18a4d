//! `vitalgate replay`: recorded sessions through the gateway's alarm engine with a
//! given configuration, as fast as the engine goes, to see what a limit set would
//! raise before a clinic changes it.
//!
//! - [`record`]: the recording format (JSON Lines of MQTT messages), shared by the
//!   scenario library (`scenarios/`) and a gateway's capture;
//! - [`run`]: one recording through a fresh [`Ward`](crate::core::Ward) on the
//!   recording's own time (no clock, no broker, no audit trail);
//! - [`score`]: alarms against annotated true events;
//! - [`report`] and [`render`]: burden per rule, A against B, as a table, JSON or SVG.
//!
//! Nobody acknowledges in a replay: a latched alarm stays active to the end of its
//! recording. There is no chair limit and no forgetting of idle chairs.
//!
//! A recording with an annotation beside it (`x.json` next to `x.jsonl` or
//! `x.jsonl.gz`) is replayed
//! alone and scored; recordings without one (a capture's rotated files) are replayed
//! together, in name order, as one stream.

pub mod record;
pub mod render;
pub mod report;
pub mod run;
pub mod score;

#[cfg(test)]
mod tests;

use crate::config::Config;
use record::Record;
use report::Report;
use score::{Annotation, Score};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("no recordings (*.jsonl, *.jsonl.gz) found in the paths given")]
    NoInput,
}

/// Replay every recording in `inputs` with `config` (named `name` in the report).
pub fn replay(config: &Config, name: &str, inputs: &[PathBuf]) -> Result<Report, ReplayError> {
    let files = record::expand(inputs)?;
    let mut report = Report::new(name.to_string());
    let mut score = Score::default();
    let mut unannotated = Vec::new();
    for file in &files {
        match Annotation::beside(file)? {
            Some(annotation) => {
                let replayed = replay_files(config, std::slice::from_ref(file))?;
                score.add(&annotation, &replayed);
                report.add(annotation.name.clone(), replayed);
            }
            None => unannotated.push(file.clone()),
        }
    }
    if !unannotated.is_empty() {
        let replayed = replay_files(config, &unannotated)?;
        report.add(label(&unannotated), replayed);
    }
    if score.recordings > 0 {
        report.score = Some(score);
    }
    report.tally();
    Ok(report)
}

/// One stream made of `files` in order, through one engine.
pub fn replay_files(config: &Config, files: &[PathBuf]) -> Result<run::Replayed, ReplayError> {
    let mut engine = run::Run::new(config)?;
    let mut last = 0;
    for file in files {
        for record in record::records(file)? {
            let record: Record = record?;
            last = last.max(record.delivered_at());
            engine.feed(&record);
        }
    }
    Ok(engine.finish(last))
}

fn label(files: &[PathBuf]) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into())
    };
    match files {
        [one] => name(one),
        [first, .., last] => format!("{} … {}", name(first), name(last)),
        [] => String::new(),
    }
}
