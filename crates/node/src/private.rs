//! The data directory is private to the node's user: it holds the node's
//! key, the IMAP key, password hashes and every message. New files are made
//! private by the process umask (set first thing in `main`); a directory or
//! file found readable by others (made by an older version, or by hand) is
//! tightened, and each change is logged.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Makes new files and directories of this process private (0600 / 0700).
pub fn umask() {
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Replaces the file at `path` with `text` whole: written beside it, then
/// renamed over it, so a crash leaves the old file or the new one.
pub fn replace_file(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `N` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    use std::io::Read;
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(out)
}

/// Tightens `dir` to 0700 and each file directly in it to no access for
/// group and others. Returns what it changed, as lines to log; a directory
/// that does not exist yet is left alone (it is created private).
pub fn tighten(dir: &Path) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    let fix = |path: &Path, wanted: fn(u32) -> u32, changed: &mut Vec<String>| -> Result<(), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mode = std::fs::symlink_metadata(path).map_err(err)?.permissions().mode() & 0o7777;
        let new = wanted(mode);
        if new != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(new)).map_err(err)?;
            changed.push(format!("{}: mode {mode:o} was open to other users; now {new:o}", path.display()));
        }
        Ok(())
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(changed),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => return Err(format!("{}: not a directory", dir.display())),
        Ok(_) => {}
    }
    fix(dir, |_| 0o700, &mut changed)?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let kind = entry.file_type().map_err(|e| format!("{}: {e}", entry.path().display()))?;
        // Sockets included (the control socket); symbolic links are not followed.
        if kind.is_file() || kind.is_socket() {
            fix(&entry.path(), |m| m & 0o700, &mut changed)?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_modes_are_tightened_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.join("node.key"), b"k").unwrap();
        std::fs::set_permissions(d.join("node.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(d.join("ok"), b"k").unwrap();
        std::fs::set_permissions(d.join("ok"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let changed = tighten(&d).unwrap();
        assert_eq!(changed.len(), 2, "{changed:?}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("node.key")), 0o600);
        assert!(tighten(&d).unwrap().is_empty(), "a second pass changes nothing");
        assert!(tighten(&dir.path().join("absent")).unwrap().is_empty());
    }
}
