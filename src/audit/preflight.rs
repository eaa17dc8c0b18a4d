//! `--check`'s look at the audit trail, leaving nothing changed (a probe file
//! made in its directory is removed); the directory check is also
//! [`super::Audit::open`]'s.

use super::{AuditError, SCHEMA_VERSION};
use std::io::Read;
use std::path::Path;

/// The file's directory exists and takes new files; if the file exists, this
/// user may open it for writing, and its header is SQLite's with no newer schema
/// than this build writes. Read as plain bytes: opening it with SQLite could
/// replay a WAL left by a crash, which is the gateway's to do when it starts (and
/// a schema change still in the WAL is seen then).
pub fn check_path(path: &Path) -> Result<(), AuditError> {
    let name = path.display().to_string();
    directory_exists(path, &name)?;
    directory_writable(path, &name)?;
    if !path.exists() {
        return Ok(());
    }
    let unwritable = |source| AuditError::Unwritable {
        path: name.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(unwritable)?;
    let mut header = Vec::with_capacity(HEADER);
    (&mut file)
        .take(HEADER as u64)
        .read_to_end(&mut header)
        .map_err(unwritable)?;
    if header.is_empty() {
        return Ok(()); // SQLite takes an empty file for a new database.
    }
    if header.len() < HEADER || !header.starts_with(MAGIC) {
        return Err(AuditError::NotADatabase { path: name });
    }
    // `PRAGMA user_version`: a big-endian signed 32-bit integer at offset 60.
    let found = i64::from(i32::from_be_bytes([
        header[60], header[61], header[62], header[63],
    ]));
    if found > SCHEMA_VERSION {
        return Err(AuditError::NewerSchema {
            path: name,
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The directory `path` (named `name`) is in exists: SQLite would create the
/// file, not its directory.
pub(super) fn directory_exists(path: &Path, name: &str) -> Result<(), AuditError> {
    match directory_of(path).is_dir() {
        true => Ok(()),
        false => Err(AuditError::NoDirectory {
            path: name.to_owned(),
        }),
    }
}

/// The directory `path` is in: `.` for a bare file name.
fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The directory `path` is in takes new files, as SQLite needs: it creates the
/// database there when new, and the `-wal` and `-shm` files beside it at every
/// start (a clean stop removes them). Tried, not inferred from permission bits:
/// ACLs, a read-only mount and root's exemptions all count. The probe is removed.
fn directory_writable(path: &Path, name: &str) -> Result<(), AuditError> {
    let dir = directory_of(path);
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    // A new, randomly named file, removed when dropped.
    tempfile::Builder::new()
        .prefix(&format!(".{file}.check-"))
        .tempfile_in(dir)
        .map(drop)
        .map_err(|source| AuditError::DirectoryUnwritable {
            path: name.to_owned(),
            dir: dir.display().to_string(),
            source,
        })
}

/// A database file's header: its first 100 bytes, starting with these 16.
const HEADER: usize = 100;
const MAGIC: &[u8] = b"SQLite format 3\0";

#[cfg(test)]
mod tests {
    use super::check_path;
    use crate::audit::AuditError;
    use std::path::Path;

    #[test]
    fn a_missing_directory_is_reported_and_a_new_file_is_not_made() {
        assert!(check_path(Path::new("/nonexistent-vitalgate-dir/audit.sqlite3")).is_err());
        // A directory that takes no new files, even for root (procfs).
        assert!(matches!(
            check_path(Path::new("/proc/audit.sqlite3")),
            Err(AuditError::DirectoryUnwritable { .. })
        ));
        let dir = std::env::temp_dir().join(format!("vg-preflight-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("audit.sqlite3");
        assert!(check_path(&file).is_ok());
        assert!(!file.exists(), "--check creates nothing");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the probe is removed"
        );
        std::fs::write(&file, b"").unwrap();
        assert!(check_path(&file).is_ok(), "SQLite takes an empty file");
        std::fs::write(&file, b"not a database").unwrap();
        assert!(check_path(&file).is_err());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"not a database",
            "unchanged"
        );
        std::fs::remove_file(&file).unwrap();
        let audit = crate::audit::Audit::open(&file, false).unwrap();
        drop(audit);
        assert!(check_path(&file).is_ok(), "a database this build wrote");
        // The same file from a newer build (user_version 99).
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
        std::fs::write(&file, &bytes).unwrap();
        assert!(check_path(&file).is_err(), "a newer schema");
        // A negative user_version is older, as SQLite reads it (signed).
        bytes[60..64].copy_from_slice(&(-1i32).to_be_bytes());
        std::fs::write(&file, &bytes).unwrap();
        assert!(check_path(&file).is_ok(), "user_version -1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
