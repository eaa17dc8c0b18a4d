//! `--check`'s look at the audit trail, without creating or changing anything.

use super::AuditError;
use std::path::Path;

/// The file's directory exists; if the file exists, this user may open it for
/// writing. (Opening it with SQLite could replay a WAL left by a crash: that
/// is the gateway's to do when it starts.)
pub fn check_path(path: &Path) -> Result<(), AuditError> {
    let name = path.display().to_string();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if parent.is_some_and(|p| !p.is_dir()) {
        return Err(AuditError::NoDirectory { path: name });
    }
    if !path.exists() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| AuditError::Unwritable { path: name, source })
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
        std::fs::write(&file, b"kept as it is").unwrap();
        assert!(check_path(&file).is_ok());
        assert_eq!(std::fs::read(&file).unwrap(), b"kept as it is");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
