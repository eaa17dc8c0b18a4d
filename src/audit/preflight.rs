//! `--check`'s look at the audit trail: without creating or changing anything.

use super::{AuditError, SCHEMA_VERSION};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// The file's directory exists; if the file exists, it can be opened for
/// writing and holds no newer schema than this build writes.
pub fn check_path(path: &Path) -> Result<(), AuditError> {
    let name = path.display().to_string();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(AuditError::NoDirectory { path: name });
    }
    if !path.exists() {
        return Ok(());
    }
    let open_err = |source| AuditError::Open {
        path: name.clone(),
        source,
    };
    // Opening for writing (no create) asks the file system what writing would;
    // nothing is written until a statement does.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(AuditError::NewerSchema {
            path: name,
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_path;
    use std::path::Path;

    #[test]
    fn a_missing_directory_is_reported_and_a_new_file_is_not_made() {
        assert!(check_path(Path::new("/nonexistent-vitalgate-dir/audit.sqlite3")).is_err());
        let dir = std::env::temp_dir().join(format!("vg-preflight-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("audit.sqlite3");
        assert!(check_path(&file).is_ok());
        assert!(!file.exists(), "--check creates nothing");
        std::fs::write(&file, b"not a database").unwrap();
        assert!(check_path(&file).is_err(), "a file that is not SQLite");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
