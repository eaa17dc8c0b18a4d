//! The subscription filter and how a topic names its chair.

use std::fmt;

/// A filter such as `clinic/+/chair/+/vitals`: the first `+` level is the site, the
/// second the chair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    filter: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Site,
    Chair,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TopicError(String);

/// Longest site or chair name accepted.
pub use crate::core::chair_key::MAX_ID_LEN;

impl TopicPattern {
    pub fn parse(filter: &str) -> Result<TopicPattern, TopicError> {
        if filter.starts_with('$') {
            return Err(TopicError(format!(
                "'{filter}': '$' topics (shared subscriptions, $SYS) are not supported: \
                 received topics would not match the filter"
            )));
        }
        let mut levels = Vec::new();
        let mut wildcards = 0;
        for part in filter.split('/') {
            match part {
                "+" => {
                    wildcards += 1;
                    levels.push(if wildcards == 1 {
                        Level::Site
                    } else {
                        Level::Chair
                    });
                }
                p if p.contains('+') || p.contains('#') => {
                    return Err(TopicError(format!(
                        "'{filter}': only whole-level '+' wildcards are allowed (no '#')"
                    )))
                }
                p => levels.push(Level::Literal(p.to_string())),
            }
        }
        if wildcards != 2 {
            return Err(TopicError(format!(
                "'{filter}' must have exactly two '+' levels (site, then chair), found {wildcards}"
            )));
        }
        Ok(TopicPattern {
            filter: filter.to_string(),
            levels,
        })
    }

    /// The filter to subscribe to.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The chair key `{site}/{chair}` named by `topic`, or why it names none.
    pub fn chair_key(&self, topic: &str) -> Result<String, TopicError> {
        let mut site = None;
        let mut chair = None;
        // The levels of `topic`, as `topic.split('/')` gives them, scanned byte by
        // byte ('/' is ASCII, so every cut is on a char boundary): this runs for
        // every device message, and the split iterator's searcher costs more than
        // the scan.
        let mut parts = Levels { topic, start: 0 };
        for level in &self.levels {
            let Some(part) = parts.next() else {
                return Err(TopicError(format!(
                    "topic does not match '{}'",
                    self.filter
                )));
            };
            match level {
                Level::Literal(l) if l == part => {}
                Level::Literal(_) => {
                    return Err(TopicError(format!(
                        "topic does not match '{}'",
                        self.filter
                    )))
                }
                Level::Site => site = Some(part),
                Level::Chair => chair = Some(part),
            }
        }
        if parts.next().is_some() {
            return Err(TopicError(format!(
                "topic does not match '{}'",
                self.filter
            )));
        }
        let (site, chair) = (site.unwrap_or(""), chair.unwrap_or(""));
        for (what, id) in [("site", site), ("chair", chair)] {
            if !crate::core::chair_key::valid_id(id) {
                return Err(TopicError(format!(
                    "{what} '{}' must be 1-{MAX_ID_LEN} characters of letters, digits, '_', '-' or '.'",
                    id.escape_debug()
                )));
            }
        }
        // Built by hand: this runs for every device message, and `format!`'s
        // machinery costs more than the copy itself.
        let mut key = String::with_capacity(site.len() + 1 + chair.len());
        key.push_str(site);
        key.push('/');
        key.push_str(chair);
        Ok(key)
    }
}

/// What a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// A device reading (`mqtt.topic`).
    Vitals,
    /// A session message (`mqtt.session_topic`).
    Session,
    /// A device status message (`mqtt.status_topic`).
    Status,
}

/// The three subscription filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub vitals: TopicPattern,
    pub session: TopicPattern,
    pub status: TopicPattern,
}

impl Topics {
    /// Parse the filters; the error names the config key.
    pub fn parse(
        vitals: &str,
        session: &str,
        status: &str,
    ) -> Result<Topics, (&'static str, TopicError)> {
        Ok(Topics {
            vitals: TopicPattern::parse(vitals).map_err(|e| ("mqtt.topic", e))?,
            session: TopicPattern::parse(session).map_err(|e| ("mqtt.session_topic", e))?,
            status: TopicPattern::parse(status).map_err(|e| ("mqtt.status_topic", e))?,
        })
    }

    /// What `topic` carries and the chair it names. Readings are tried first: they
    /// are nearly all the traffic.
    pub fn classify(&self, topic: &str) -> Result<(TopicKind, String), TopicError> {
        let vitals = match self.vitals.chair_key(topic) {
            Ok(chair) => return Ok((TopicKind::Vitals, chair)),
            Err(e) => e,
        };
        if let Ok(chair) = self.session.chair_key(topic) {
            return Ok((TopicKind::Session, chair));
        }
        if let Ok(chair) = self.status.chair_key(topic) {
            return Ok((TopicKind::Status, chair));
        }
        Err(vitals)
    }

    pub fn filters(&self) -> [&str; 3] {
        [
            self.vitals.filter(),
            self.session.filter(),
            self.status.filter(),
        ]
    }
}

/// The levels of a topic, split at each '/' (an empty topic is one empty level).
struct Levels<'a> {
    topic: &'a str,
    /// Where the next level starts; past the end once the last was taken.
    start: usize,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.topic.get(self.start..)?;
        let len = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
        self.start += len + 1;
        Some(&rest[..len])
    }
}

impl fmt::Display for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}, {}", self.vitals, self.session, self.status)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_names_site_and_chair() {
        let p = TopicPattern::parse("clinic/+/chair/+/vitals").unwrap();
        assert_eq!(
            p.chair_key("clinic/north/chair/7/vitals").unwrap(),
            "north/7"
        );
        assert!(p.chair_key("clinic/north/chair/7/status").is_err());
        assert!(p.chair_key("clinic/north/chair/7/vitals/x").is_err());
        assert!(p.chair_key("clinic//chair/7/vitals").is_err());
        assert!(p.chair_key("clinic/no rth/chair/7/vitals").is_err());
    }

    #[test]
    fn topics_classify_readings_sessions_and_status() {
        let t = Topics::parse(
            "clinic/+/chair/+/vitals",
            "clinic/+/chair/+/session",
            "clinic/+/chair/+/status",
        )
        .unwrap();
        assert_eq!(
            t.classify("clinic/n/chair/1/session").unwrap(),
            (TopicKind::Session, "n/1".to_string())
        );
        assert_eq!(
            t.classify("clinic/n/chair/1/status").unwrap().0,
            TopicKind::Status
        );
        assert_eq!(
            t.classify("clinic/n/chair/1/vitals").unwrap().0,
            TopicKind::Vitals
        );
        assert!(t.classify("clinic/n/chair/1/other").is_err());
    }

    #[test]
    fn filters_need_exactly_two_plus_levels() {
        assert!(TopicPattern::parse("clinic/+/vitals").is_err());
        assert!(TopicPattern::parse("clinic/+/chair/+/#").is_err());
        assert!(TopicPattern::parse("a/+/+/b").is_ok());
        assert!(TopicPattern::parse("$share/g/+/+").is_err());
    }

    proptest::proptest! {
        /// The byte scan splits exactly as `str::split('/')` does, multi-byte
        /// characters, empty levels and a trailing '/' included.
        #[test]
        fn levels_split_as_str_split(topic in "[a/é+#\\x{1F600}]{0,12}") {
            let scanned: Vec<&str> = Levels { topic: &topic, start: 0 }.collect();
            let split: Vec<&str> = topic.split('/').collect();
            proptest::prop_assert_eq!(scanned, split);
        }
    }
}
