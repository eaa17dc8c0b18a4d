//! The chair key `{site}/{chair}`: how every part of the gateway names a chair. It
//! comes from a device's topic (`clinic/{site}/chair/{chair}/...`), and a dashboard
//! command or an API query that names a chair must name it the same way.

/// The site of chair key `{site}/{chair}`.
pub fn site_of(chair: &str) -> &str {
    chair.split('/').next().unwrap_or(chair)
}

/// The site reserved for simulated chairs (`vitalgate demo`): every frame about
/// one of its chairs says `"simulated": true`, and stations label it SIMULATED.
pub const SIMULATED_SITE: &str = "demo";

/// Whether chair key `chair` names a simulated chair.
pub fn is_simulated(chair: &str) -> bool {
    site_of(chair) == SIMULATED_SITE
}

/// Longest site or chair name.
pub const MAX_ID_LEN: usize = 64;

/// A site or chair name: 1-[`MAX_ID_LEN`] letters, digits, `_`, `-` or `.` (what an
/// MQTT topic level can carry without escaping, and a URL path without encoding).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Whether `key` is a well-formed `{site}/{chair}` key.
pub fn is_chair_key(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(site, chair)| valid_id(site) && valid_id(chair))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chair_keys_are_two_valid_names() {
        assert!(is_chair_key("north/7"));
        assert!(is_chair_key("demo/chair-1.b_2"));
        for bad in ["north", "north/", "/7", "north/7/x", "nörth/7", "a b/7", ""] {
            assert!(!is_chair_key(bad), "{bad}");
        }
        assert!(valid_id(&"x".repeat(MAX_ID_LEN)));
        assert!(!valid_id(&"x".repeat(MAX_ID_LEN + 1)));
    }
}
