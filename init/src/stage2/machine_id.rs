//! The machine id at first boot, as systemd makes it (machine-id(5)): if
//! `/etc/machine-id` holds no id yet (the image ships it empty), 128
//! random bits become one, written to a temporary file, synced, renamed
//! over it and the directory synced, so a power cut leaves either no id
//! or the whole one. libostree's /etc merge carries the file into every
//! later deployment, so upgrades and rollbacks keep it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use berth_hostapi::machine_id::MachineId;
use rustix::rand::{GetRandomFlags, getrandom};

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file already held an id.
    Kept(MachineId),
    /// A new id was written.
    Made(MachineId),
}

/// Makes the machine id at `path` unless it holds one; returns it.
pub fn ensure(path: &Path) -> std::io::Result<Outcome> {
    if let Some(id) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| MachineId::parse(&t))
    {
        return Ok(Outcome::Kept(id));
    }
    let id = MachineId::from_random(random_bytes()?);
    write_synced(path, format!("{id}\n").as_bytes())?;
    Ok(Outcome::Made(id))
}

/// 16 random bytes from the kernel. Never waits for the entropy pool
/// (PID 1 never blocks): a kernel whose pool is not ready yet (early
/// boot without a hardware source) gives its best bytes instead
/// (`GRND_INSECURE`, Linux 5.6), which is what systemd accepts for the
/// machine id too (it is an identifier, not a key).
fn random_bytes() -> std::io::Result<[u8; 16]> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    let mut flags = GetRandomFlags::NONBLOCK;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match getrandom(rest, flags) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::AGAIN) if flags == GetRandomFlags::NONBLOCK => {
                flags = GetRandomFlags::INSECURE;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(".machine-id.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn an_empty_file_gets_an_id_once_and_keeps_it() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let path = t.path().join("machine-id");
        std::fs::write(&path, "")?;
        let made = ensure(&path)?;
        let text = std::fs::read_to_string(&path)?;
        assert_eq!(
            made,
            Outcome::Made(MachineId::parse(&text).ok_or_else(|| std::io::Error::other("no id"))?)
        );
        assert_eq!(text.len(), 33);
        assert!(text.ends_with('\n'));
        assert!(
            text.bytes()
                .take(32)
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(std::fs::metadata(&path)?.mode() & 0o777, 0o444);
        let Outcome::Made(id) = made else {
            return Err(std::io::Error::other("no id made"));
        };
        assert_eq!(ensure(&path)?, Outcome::Kept(id));
        assert!(!t.path().join(".machine-id.new").exists());
        Ok(())
    }

    #[test]
    fn missing_or_uninitialized_files_get_ids_and_two_machines_differ() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::fs::write(&b, "uninitialized\n")?;
        let (x, y) = (ensure(&a)?, ensure(&b)?);
        assert!(matches!(x, Outcome::Made(_)), "{x:?}");
        assert!(matches!(y, Outcome::Made(_)), "{y:?}");
        assert_ne!(x, y);
        Ok(())
    }
}
