//! Live vitals, coalesced per chair.
//!
//! Every accepted reading appends its chair's new state to one bounded log and bumps
//! a version on a `watch` channel. Each subscribed dashboard remembers the version it
//! has sent up to; when it is ready to write, it takes the newest entry per chair
//! since then. A dashboard that falls behind therefore gets each chair's latest
//! values rather than a backlog, and the ingest path does O(1) work per reading
//! however many dashboards watch.

use super::protocol::{self, Frame};
use crate::core::{ChairView, Latest};
use crate::engine::WardView;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Which chairs a dashboard wants live vitals for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Site(String),
    /// Every site of a token limited to several (`subscribe_vitals` without `site`).
    Sites(Vec<String>),
}

impl Scope {
    pub fn contains(&self, chair: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Site(site) => crate::core::chair_key::site_of(chair) == site,
            Scope::Sites(sites) => sites
                .iter()
                .any(|s| s == crate::core::chair_key::site_of(chair)),
        }
    }
}

struct Log {
    entries: VecDeque<(u64, Arc<str>, Frame)>,
    version: u64,
}

pub struct LiveFeed {
    log: Mutex<Log>,
    capacity: usize,
    version: watch::Sender<u64>,
    subscribers: AtomicUsize,
    /// In cluster mode, the latest frame of each chair other gateways own
    /// (their engines hold its state, this one's ward does not), for
    /// dashboards subscribing; at most `remote_chairs` chairs.
    remote: Option<Mutex<HashMap<Arc<str>, Frame>>>,
    remote_chairs: usize,
}

/// The frames a dashboard should send next, and the version they bring it up to.
pub struct Batch {
    pub frames: Vec<Frame>,
    pub version: u64,
}

impl LiveFeed {
    pub fn new(capacity: usize) -> Self {
        LiveFeed {
            log: Mutex::new(Log {
                entries: VecDeque::new(),
                version: 0,
            }),
            capacity,
            version: watch::Sender::new(0),
            subscribers: AtomicUsize::new(0),
            remote: None,
            remote_chairs: 0,
        }
    }

    /// A feed that also keeps the latest frame of up to `chairs` chairs made
    /// elsewhere ([`LiveFeed::publish_frame`]), so that a dashboard subscribing
    /// gets their current values at once, as it does for the ward's chairs.
    pub fn keeping_remote(capacity: usize, chairs: usize) -> Self {
        LiveFeed {
            remote: Some(Mutex::new(HashMap::new())),
            remote_chairs: chairs,
            ..LiveFeed::new(capacity)
        }
    }

    /// Record a chair's new state. Skipped entirely while nobody is subscribed.
    pub fn publish(&self, chair: &Arc<str>, latest: &Latest, ingested_at: Instant) {
        if self.subscribers.load(Ordering::SeqCst) == 0 {
            return;
        }
        let frame = protocol::vitals_frame(chair, latest, Some(ingested_at));
        self.append(chair, frame);
    }

    /// Record a chair's new state as its `vitals` frame, made elsewhere (by the
    /// gateway of a cluster that owns the chair): kept as the chair's latest
    /// when the feed keeps them, logged while anybody is subscribed.
    pub fn publish_frame(&self, chair: &Arc<str>, frame: Frame) {
        if let Some(remote) = &self.remote {
            let mut remote = remote.lock().unwrap_or_else(|p| p.into_inner());
            if remote.len() < self.remote_chairs || remote.contains_key(chair) {
                remote.insert(chair.clone(), frame.clone());
            }
        }
        if self.subscribers.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.append(chair, frame);
    }

    fn append(&self, chair: &Arc<str>, frame: Frame) {
        let version = {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            log.version += 1;
            let v = log.version;
            if log.entries.len() >= self.capacity {
                log.entries.pop_front();
            }
            log.entries.push_back((v, chair.clone(), frame));
            v
        };
        self.version.send_replace(version);
    }

    /// Start a subscription: returns a version watcher and the current state of every
    /// chair in scope, read from the ward, with the log version it is current up to.
    ///
    /// The subscriber count goes up before the version and the ward are read, so any
    /// reading not yet in the ward when it is read is logged after that version.
    pub fn subscribe(&self, scope: &Scope, ward: &WardView) -> (watch::Receiver<u64>, Batch) {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        (self.version.subscribe(), self.subscribe_again(scope, ward))
    }

    /// Every chair in scope from the ward again (and those kept from other
    /// gateways that the ward does not hold), for a subscriber that fell off
    /// the log.
    pub fn subscribe_again(&self, scope: &Scope, ward: &WardView) -> Batch {
        let version = self.log.lock().unwrap_or_else(|p| p.into_inner()).version;
        let chairs = ward.chairs();
        let mut frames = Self::frames_for(scope, &chairs);
        if let Some(remote) = &self.remote {
            let local: HashSet<&str> = chairs.iter().map(|c| &*c.chair).collect();
            let remote = remote.lock().unwrap_or_else(|p| p.into_inner());
            frames.extend(
                remote
                    .iter()
                    .filter(|(chair, _)| scope.contains(chair) && !local.contains(&***chair))
                    .map(|(_, frame)| frame.clone()),
            );
        }
        Batch { frames, version }
    }

    fn frames_for(scope: &Scope, chairs: &[ChairView]) -> Vec<Frame> {
        chairs
            .iter()
            .filter(|c| scope.contains(&c.chair))
            .map(|c| protocol::vitals_frame(&c.chair, &c.latest, None))
            .collect()
    }

    pub fn unsubscribe(&self) {
        self.subscribers.fetch_sub(1, Ordering::SeqCst);
    }

    /// The newest frame per chair in scope since `after`. `None` when the log no longer
    /// reaches back that far: the caller resends every chair from the ward instead.
    pub fn since(&self, after: u64, scope: &Scope) -> Option<Batch> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((oldest, _, _)) = log.entries.front() {
            if *oldest > after + 1 {
                return None;
            }
        }
        let mut seen = HashSet::new();
        let mut frames: Vec<Frame> = log
            .entries
            .iter()
            .rev()
            .take_while(|(v, _, _)| *v > after)
            .filter(|(_, chair, _)| scope.contains(chair) && seen.insert(chair.clone()))
            .map(|(_, _, f)| f.clone())
            .collect();
        frames.reverse();
        Some(Batch {
            frames,
            version: log.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{RuleSet, Sample, Vital};

    fn ward() -> WardView {
        crate::core::Ward::new(Arc::new(RuleSet::default()), 10).into()
    }

    fn latest(hr: f64) -> Latest {
        let mut l = Latest::default();
        l.vitals[Vital::Hr.index()] = Some(Sample { value: hr, ts: 1 });
        l
    }

    #[test]
    fn backlog_coalesces_to_latest_per_chair_in_scope() {
        let feed = LiveFeed::new(100);
        let (_rx, start) = feed.subscribe(&Scope::Site("n".into()), &ward());
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("n/1".into(), "n/2".into(), "s/1".into());
        for i in 0..10 {
            feed.publish(&a, &latest(60.0 + i as f64), Instant::now());
            feed.publish(&b, &latest(70.0), Instant::now());
            feed.publish(&c, &latest(80.0), Instant::now());
        }
        let batch = feed.since(start.version, &Scope::Site("n".into())).unwrap();
        assert_eq!(batch.frames.len(), 2);
        assert!(batch.frames[0].as_str().contains("\"value\":69.0"));
        assert!(batch.frames[1].as_str().contains("n/2"));
        assert_eq!(batch.version, 30);
        assert!(feed.since(30, &Scope::All).unwrap().frames.is_empty());
    }

    #[test]
    fn falling_off_the_log_asks_for_a_resend() {
        let feed = LiveFeed::new(4);
        let (_rx, start) = feed.subscribe(&Scope::All, &ward());
        let a: Arc<str> = "n/1".into();
        for _ in 0..10 {
            feed.publish(&a, &latest(60.0), Instant::now());
        }
        assert!(feed.since(start.version, &Scope::All).is_none());
        assert!(feed.since(7, &Scope::All).is_some());
    }

    #[test]
    fn other_gateways_chairs_are_current_for_a_new_subscriber() {
        let feed = LiveFeed::keeping_remote(4, 2);
        let frame = |chair: &str, hr: f64| protocol::vitals_frame(chair, &latest(hr), None);
        // Made elsewhere while nobody here is subscribed; the latest per chair,
        // at most two chairs.
        for (chair, hr) in [("n/1", 60.0), ("n/1", 61.0), ("s/1", 70.0), ("n/2", 80.0)] {
            feed.publish_frame(&Arc::from(chair), frame(chair, hr));
        }
        let (_rx, start) = feed.subscribe(&Scope::Site("n".into()), &ward());
        let texts: Vec<&str> = start.frames.iter().map(Frame::as_str).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(
            texts[0].contains("n/1") && texts[0].contains("61.0"),
            "{texts:?}"
        );
        // A single gateway's feed keeps none.
        let feed = LiveFeed::new(4);
        feed.publish_frame(&Arc::from("n/1"), frame("n/1", 60.0));
        assert!(feed.subscribe(&Scope::All, &ward()).1.frames.is_empty());
    }

    #[test]
    fn nothing_is_logged_without_subscribers() {
        let feed = LiveFeed::new(4);
        feed.publish(&"n/1".into(), &latest(60.0), Instant::now());
        let (_rx, start) = feed.subscribe(&Scope::All, &ward());
        assert_eq!(start.version, 0);
    }
}
