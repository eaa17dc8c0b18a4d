//! The open-file limit. Every dashboard holds a socket, and so does every device
//! on the embedded broker: a limit below what the configuration allows makes
//! `accept` fail (EMFILE, retried by the listener a second later) long before
//! `websocket.max_connections` would refuse anyone with a 503, and `/ready` and
//! `/metrics` go unanswered with them. systemd's default soft limit for a service,
//! like most shells', is 1024.

use crate::config::{BrokerMode, Config};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Files beyond the sockets counted: the audit trail and its WAL, the broker
/// connection, API requests, capture files, the runtime's own.
const MARGIN: u64 = 256;

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFiles {
    /// The soft limit already allows what is needed (or there is none).
    Enough,
    /// The soft limit was raised from `from` to `to`.
    Raised { from: u64, to: u64 },
    /// The limit is `limit`, below `needed`, and the hard limit (or the system)
    /// allows no more.
    Short { limit: u64, needed: u64 },
}

/// Open files `config` may need at once: every dashboard, every device of the
/// embedded broker, and a margin.
pub fn needed(config: &Config) -> u64 {
    let devices = match config.mqtt.broker {
        BrokerMode::Embedded => config.mqtt.embedded.max_connections,
        BrokerMode::External => 0,
    };
    (config.websocket.max_connections as u64)
        .saturating_add(devices as u64)
        .saturating_add(MARGIN)
}

/// Raise the soft limit on open files to `needed`, at most to the hard limit, as
/// servers commonly do at start (Go's runtime raises it to the hard limit).
pub fn raise(needed: u64) -> OpenFiles {
    let limits = getrlimit(Resource::Nofile);
    let Some(soft) = limits.current else {
        return OpenFiles::Enough; // unlimited
    };
    if soft >= needed {
        return OpenFiles::Enough;
    }
    let to = limits.maximum.map_or(needed, |hard| hard.min(needed));
    if to > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(to),
                maximum: limits.maximum,
            },
        )
        .is_ok()
    {
        if to >= needed {
            return OpenFiles::Raised { from: soft, to };
        }
        return OpenFiles::Short { limit: to, needed };
    }
    OpenFiles::Short {
        limit: soft,
        needed,
    }
}

/// [`raise`] for `config`, logged: a limit still short is a warning that says how
/// to lift it.
pub fn raise_for(config: &Config) {
    match raise(needed(config)) {
        OpenFiles::Enough => {}
        OpenFiles::Raised { from, to } => {
            tracing::info!(from, to, "raised the open-file limit (RLIMIT_NOFILE)")
        }
        OpenFiles::Short { limit, needed } => tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what websocket.max_connections (and the \
             embedded broker's max_connections) allow: beyond it new connections are \
             not accepted at all; raise it (LimitNOFILE= in the systemd unit, \
             `ulimit -n` in a shell) or lower max_connections"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{raise, OpenFiles};

    #[test]
    fn a_limit_already_high_enough_is_left_alone() {
        assert_eq!(raise(16), OpenFiles::Enough);
    }

    #[test]
    fn beyond_the_hard_limit_it_is_short() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        if let Some(hard) = hard.filter(|h| *h < u64::MAX / 2) {
            assert!(matches!(
                raise(hard * 2),
                OpenFiles::Short { needed, .. } if needed == hard * 2
            ));
        }
    }
}
