//! Loading: built-in defaults, then the user's TOML file, then `VITALGATE_*`
//! environment variables, then validation. Every error names the key and where the
//! offending value came from.

use super::{Config, DEFAULT_TOML};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Prefix of environment overrides; `__` separates nesting levels, so
/// `VITALGATE_MQTT__CLIENT_ID=x` sets `mqtt.client_id`.
pub const ENV_PREFIX: &str = "VITALGATE_";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The shipped `config/vitalgate.toml`, compiled in.
    Defaults,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Defaults => f.write_str("built-in defaults (config/vitalgate.toml)"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One invalid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or environment variable the value came from.
    pub origin: String,
    /// Dotted key, e.g. `websocket.queue_capacity` or `rules[2].low`.
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("invalid configuration ({source_name}):{}", list(problems))]
    Invalid {
        source_name: String,
        problems: Vec<(String, String)>,
    },
    #[error("invalid configuration:{}", problems.iter().map(|p| format!("\n  {}: {}: {}", p.origin, p.key, p.message)).collect::<String>())]
    Keys { problems: Vec<Problem> },
}

fn list(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(k, m)| format!("\n  {k}: {m}"))
        .collect()
}

impl ConfigError {
    /// The keys named by this error, for tests and tooling.
    pub fn keys(&self) -> Vec<String> {
        match self {
            ConfigError::Keys { problems } => problems.iter().map(|p| p.key.clone()).collect(),
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(|(k, _)| k.clone()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Keys set by environment variables: (dotted key, variable name, raw value).
type EnvKeys = Vec<(String, String, String)>;

/// Replace the value at dotted `key` with the string `raw`; false if it already is one.
fn set_string(table: &mut Table, key: &str, raw: &str) -> bool {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut at = table;
    for part in parts {
        match at.get_mut(part) {
            Some(Value::Table(t)) => at = t,
            _ => return false,
        }
    }
    match at.get(last) {
        Some(Value::String(_)) | None => false,
        Some(_) => {
            at.insert(last.to_string(), Value::String(raw.to_string()));
            true
        }
    }
}

impl Config {
    /// Load: defaults, overlaid by `path` (if given), overlaid by every `VITALGATE_*`
    /// variable in `env`; then validate.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut merged = parse_table(DEFAULT_TOML, &Source::Defaults)?;
        let source = match path {
            Some(p) => Source::File(p.to_path_buf()),
            None => Source::Defaults,
        };
        let user = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.to_path_buf(),
                    source: e,
                })?;
                parse_table(&text, &source)?
            }
            None => Table::new(),
        };
        merge(&mut merged, user.clone());
        let env_keys = apply_env(&mut merged, env);
        loop {
            match finish(merged.clone(), &source, &user, &env_keys) {
                // `VITALGATE_MQTT__PASSWORD=123456` parses as a number; where the key
                // wants a string, take the variable's text as it is.
                Err(ConfigError::Keys { problems }) if problems.len() == 1 => {
                    let p = &problems[0];
                    let raw = env_keys.iter().find(|e| e.0 == p.key).map(|e| &e.2);
                    match raw {
                        Some(raw)
                            if (p.message.contains("expected a string")
                                || p.message.contains("expected path string"))
                                && set_string(&mut merged, &p.key, raw) => {}
                        _ => return Err(ConfigError::Keys { problems }),
                    }
                }
                other => return other,
            }
        }
    }

    /// Parse one complete TOML document (no defaults, no environment).
    pub fn from_toml_str(text: &str, source: Source) -> Result<Config, ConfigError> {
        let table = parse_table(text, &source)?;
        finish(table.clone(), &source, &table, &Vec::new())
    }
}

fn parse_table(text: &str, source: &Source) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        origin: source.to_string(),
        message: e.to_string(),
    })
}

/// Overlay `over` onto `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn lookup<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut at = table;
    for part in parents {
        at = at.get(part)?.as_table()?;
    }
    at.get(last)
}

fn apply_env(table: &mut Table, env: impl IntoIterator<Item = (String, String)>) -> EnvKeys {
    let mut keys = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            continue;
        }
        // For a key that holds text the variable is the text. Otherwise a value that
        // parses as a TOML value (number, bool, array, inline table, quoted string)
        // is taken as such, and anything else is a bare string; a number given for an
        // optional text key (a password of digits) is turned back into text below.
        let existing_is_text = lookup(table, &path).is_some_and(Value::is_str);
        let value = if existing_is_text {
            // The key holds text: take the variable as it is (quotes included).
            Value::String(raw.clone())
        } else {
            format!("v = {raw}")
                .parse::<Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| Value::String(raw.clone()))
        };
        let mut at = &mut *table;
        for part in &path[..path.len() - 1] {
            let slot = at
                .entry(part.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if !slot.is_table() {
                *slot = Value::Table(Table::new());
            }
            at = slot.as_table_mut().expect("just made a table");
        }
        at.insert(path[path.len() - 1].clone(), value);
        keys.push((path.join("."), name, raw));
    }
    keys
}

/// Where the value at `key` came from.
fn origin(key: &str, source: &Source, user: &Table, env: &EnvKeys) -> String {
    let plain: String = key.split('[').next().unwrap_or(key).to_string();
    if let Some((_, var, _)) = env.iter().rev().find(|(k, _, _)| {
        plain == *k || plain.starts_with(&format!("{k}.")) || k.starts_with(&format!("{plain}."))
    }) {
        return format!("environment {var}");
    }
    let mut at = Some(user);
    let mut found = true;
    for part in plain.split('.') {
        match at.and_then(|t| t.get(part)) {
            Some(Value::Table(t)) => at = Some(t),
            Some(_) => at = None,
            None => {
                found = false;
                break;
            }
        }
    }
    if found && !user.is_empty() {
        source.to_string()
    } else {
        Source::Defaults.to_string()
    }
}

fn finish(
    table: Table,
    source: &Source,
    user: &Table,
    env: &EnvKeys,
) -> Result<Config, ConfigError> {
    let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        // The path already ends in the offending key, unknown ones included.
        let key = e.path().to_string();
        let message = e.inner().message().to_string();
        ConfigError::Keys {
            problems: vec![Problem {
                origin: origin(&key, source, user, env),
                key,
                message,
            }],
        }
    })?;
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Keys {
            problems: problems
                .into_iter()
                .map(|(key, message)| Problem {
                    origin: origin(&key, source, user, env),
                    key,
                    message,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("site.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// A throwaway directory removed on drop.
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "vitalgate-cfg-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn none() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn shipped_defaults_are_valid() {
        let c = Config::load(None, none()).unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.rules.is_empty());
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let (_d, path) = write("[mqtt]\nclient_id = \"from-file\"\nport = 1999\n");
        let env = vec![
            ("VITALGATE_MQTT__PORT".to_string(), "2883".to_string()),
            ("VITALGATE_MQTT__BROKER".to_string(), "external".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.mqtt.client_id, "from-file");
        assert_eq!(c.mqtt.port, 2883);
        assert_eq!(c.mqtt.broker, super::super::BrokerMode::External);
        assert_eq!(c.websocket, Config::default().websocket);
    }

    #[test]
    fn unknown_key_is_named_with_its_file() {
        let (_d, path) = write("[websocket]\nqueue_capacty = 10\n");
        let err = Config::load(Some(&path), none()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("websocket.queue_capacty"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn numeric_env_values_are_kept_as_text_where_a_string_is_expected() {
        let env = vec![
            ("VITALGATE_MQTT__USERNAME".to_string(), "4711".to_string()),
            ("VITALGATE_MQTT__PASSWORD".to_string(), "123456".to_string()),
            ("VITALGATE_MQTT__CLIENT_ID".to_string(), "42".to_string()),
            ("VITALGATE_MQTT__PORT".to_string(), "1884".to_string()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.mqtt.username.as_deref(), Some("4711"));
        assert_eq!(c.mqtt.password.as_ref().map(|p| p.expose()), Some("123456"));
        // Shown to nobody who prints the configuration.
        assert!(!format!("{c:?}").contains("123456"));
        assert_eq!(c.mqtt.client_id, "42");
        assert_eq!(c.mqtt.port, 1884);
    }

    #[test]
    fn env_text_for_a_text_key_is_taken_as_it_is() {
        let env = vec![(
            "VITALGATE_MQTT__CLIENT_ID".to_string(),
            "'quoted'".to_string(),
        )];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.mqtt.client_id, "'quoted'");
    }

    #[test]
    fn wrong_type_is_named_with_its_env_var() {
        let env = vec![(
            "VITALGATE_HTTP__BIND".to_string(),
            "not-an-address".to_string(),
        )];
        let err = Config::load(None, env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http.bind"), "{text}");
        assert!(text.contains("VITALGATE_HTTP__BIND"), "{text}");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let (_d, path) = write(
            "[websocket]\nqueue_capacity = 0\n[mqtt]\nmax_packet_bytes = 1000\n\
             [alarms]\ntick_ms = 30000\n[capture]\nqueue_capacity = 0\nrotate_bytes = 0\n\
             [[rules]]\nid = \"a\"\nvital = \"hr\"\nlow = 100\nhigh = 50\npriority = \"high\"\n",
        );
        let err = Config::load(Some(&path), none()).unwrap_err();
        let keys = err.keys();
        for k in [
            "websocket.queue_capacity",
            "mqtt.max_packet_bytes",
            "alarms.tick_ms",
            "capture.queue_capacity",
            "capture.rotate_bytes",
            "rules[0].low",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn bad_toml_names_the_file() {
        let (_d, path) = write("[mqtt\n");
        let err = Config::load(Some(&path), none()).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(err.to_string().contains("site.toml"));
    }
}
