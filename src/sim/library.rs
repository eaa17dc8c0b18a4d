//! A library of simulated infusion sessions, annotated with what happens in them and
//! the alarm a clinician would expect for it: reproducible test material for the
//! alarm rules, the dashboards and replays.
//!
//! Each [`Entry`] is one chair of site `demo` (dashboards mark it simulated) with one
//! complete session (baseline, infusion, recovery, discharged, idle), generated at full
//! rate from its first message (`live_from_ms` = 0) with a fixed seed and fixed device
//! times, so its files are the same byte for byte on every run. [`write`] stores, per
//! entry:
//! - `{name}.jsonl`: every [`Message`](super::Message) of the scenario's stream, one
//!   JSON object a line, in stream (`at_ms`) order; `delivered_ms` appears only on
//!   messages that reach the gateway late (a network outage's backlog, delivered at
//!   its end);
//! - `{name}.json`: the [`Annotation`], pretty-printed with a trailing newline.
//!
//! Every scripted event has exactly one [`Expected`] (same window); its priority is
//! the one the gateway should raise, or `None` for artefacts and what needs no action.

mod entries;

pub use entries::{DAY_MS, EPOCH_MS, SEED_BASE};

use super::{Scenario, SessionScript};
use crate::core::{Priority, Route};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// One scenario of the library.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File stem, kebab-case.
    pub name: &'static str,
    /// One or two plain sentences for a clinician.
    pub description: &'static str,
    pub scenario: Scenario,
    /// One per scripted event, in script order.
    pub expect: Vec<Expected>,
}

/// What a scripted event is and the alarm priority it calls for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    /// `{site}/{chair}`.
    pub chair: String,
    /// [`super::EventKind::name`], or the library's own name (`loose_lead`).
    pub kind: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The highest priority the gateway should raise for it; `None`: an artefact or
    /// nothing that needs action.
    pub priority: Option<Priority>,
}

/// The `{name}.json` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub name: String,
    pub description: String,
    /// Always true: the data is simulated.
    pub simulated: bool,
    pub seed: u64,
    /// Chair keys, `{site}/{chair}`.
    pub chairs: Vec<String>,
    pub sessions: Vec<SessionInfo>,
    pub events: Vec<Expected>,
    /// No event needs action (no expected priority).
    pub normal: bool,
}

/// One session of an annotation: device times of its phase starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub chair: String,
    pub patient: String,
    pub route: Route,
    pub session_number: u16,
    pub session_count: u16,
    pub start_ms: u64,
    pub infusion_start_ms: u64,
    pub recovery_start_ms: u64,
    /// When the `discharged` phase starts.
    pub discharged_ms: u64,
}

impl Entry {
    /// No event needs action.
    pub fn normal(&self) -> bool {
        self.expect.iter().all(|e| e.priority.is_none())
    }

    /// The sessions of the scenario, with their chair keys.
    pub fn sessions(&self) -> impl Iterator<Item = (String, &SessionScript)> {
        self.scenario
            .chairs
            .iter()
            .flat_map(|c| c.sessions.iter().map(move |s| (c.key(), s)))
    }

    pub fn annotation(&self) -> Annotation {
        Annotation {
            name: self.name.into(),
            description: self.description.into(),
            simulated: true,
            seed: self.scenario.seed,
            chairs: self.scenario.chairs.iter().map(|c| c.key()).collect(),
            sessions: self
                .sessions()
                .map(|(chair, s)| SessionInfo {
                    chair,
                    patient: s.patient.clone(),
                    route: s.route,
                    session_number: s.session_number,
                    session_count: s.session_count,
                    start_ms: s.start_ms,
                    infusion_start_ms: s.infusion_start(),
                    recovery_start_ms: s.recovery_start(),
                    discharged_ms: s.discharged_at(),
                })
                .collect(),
            events: self.expect.clone(),
            normal: self.normal(),
        }
    }

    /// The `.jsonl` file: one message a line, in stream order.
    pub fn write_messages(&self, mut out: impl Write) -> io::Result<()> {
        for m in self.scenario.stream() {
            serde_json::to_writer(&mut out, &m)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// The `.json` file: the annotation, pretty-printed, with a trailing newline.
    pub fn annotation_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.annotation()).expect("serialises");
        s.push('\n');
        s
    }
}

/// Every entry of the library, in file order.
pub fn library() -> Vec<Entry> {
    entries::all()
}

/// Writes `{name}.jsonl.gz` (the messages, gzipped: the library is 35 MB of JSON
/// Lines) and `{name}.json` of every entry into `dir` (created if missing), and
/// returns their paths in that order. `vitalgate scenarios` runs it.
pub fn write(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    for e in library() {
        let jsonl = dir.join(format!("{}.jsonl.gz", e.name));
        let gz = GzEncoder::new(BufWriter::new(File::create(&jsonl)?), Compression::best());
        let mut gz = BufWriter::with_capacity(1 << 16, gz);
        e.write_messages(&mut gz)?;
        gz.into_inner()
            .map_err(|e| e.into_error())?
            .finish()?
            .flush()?;
        let json = dir.join(format!("{}.json", e.name));
        fs::write(&json, e.annotation_json())?;
        paths.extend([jsonl, json]);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests;
