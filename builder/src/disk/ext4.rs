//! Fills the root partition: `mke2fs -d` copies the tree into a new ext4
//! inside the image file (no mount, no loop device), then one `debugfs`
//! run pins the timestamps mke2fs copied from the build machine.
//!
//! Reproducibility, measured with e2fsprogs 1.47.0 (Debian 12):
//! - mke2fs reads each directory with `scandir(alphasort)`, so the order
//!   the tree was created in, and the host file system's readdir order, do
//!   not matter;
//! - `E2FSPROGS_FAKE_TIME` fixes the superblock times and each inode's
//!   crtime, `-U` and `hash_seed` the UUID and directory hashes, and a
//!   private `mke2fs.conf` the features, whatever `/etc/mke2fs.conf` says;
//! - but mke2fs copies atime, mtime and ctime from the tree, and ctime is
//!   whenever the tree was written. So the debugfs pass sets ctime and
//!   atime of every inode to [`DiskIds::timestamp`] and clamps mtimes
//!   newer than it (as `SOURCE_DATE_EPOCH` does in e2fsprogs 1.47.1).
//!
//! Hard links stay hard links (mke2fs tracks inode numbers) and xattrs are
//! copied.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use super::tree::{BLOCK, INODE_RATIO, RESERVED_PERCENT, TreeScan};
use super::{DiskError, DiskIds, Extent};
use crate::command;

/// The mke2fs configuration Berth uses instead of the host's, so the
/// features and inode ratio do not change with the build machine. The
/// size types are all defined so mke2fs uses these values at any size.
fn mke2fs_conf() -> String {
    let size_types: String = ["floppy", "small", "default", "big", "huge"]
        .iter()
        .map(|t| format!("\t{t} = {{\n\t\tinode_ratio = {INODE_RATIO}\n\t}}\n"))
        .collect();
    format!(
        "[defaults]\n\
         \tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\
         \tdefault_mntopts = acl,user_xattr\n\
         \tenable_periodic_fsck = 0\n\
         \tblocksize = {BLOCK}\n\
         \tinode_size = 256\n\
         \tinode_ratio = {INODE_RATIO}\n\
         \treserved_ratio = {RESERVED_PERCENT}\n\
         \n\
         [fs_types]\n\
         \text4 = {{\n\
         \t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize\n\
         \t}}\n\
         {size_types}"
    )
}

/// The mke2fs arguments for a root file system at `extent` of `image`.
pub(crate) fn mke2fs_args(image: &Path, extent: Extent, ids: &DiskIds, tree: &Path) -> Command {
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-U"])
        .arg(ids.root_fs_uuid.to_string())
        .arg("-E")
        .arg(format!(
            "offset={},root_owner=0:0,nodiscard,assume_storage_prezeroed=1,\
             lazy_itable_init=1,lazy_journal_init=1,hash_seed={}",
            extent.offset, ids.root_fs_uuid
        ))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg((extent.size / BLOCK).to_string())
        .env("E2FSPROGS_FAKE_TIME", fake_time(ids.timestamp));
    cmd
}

/// e2fsprogs treats a fake time of 0 as "use the clock"; 1 is the
/// nearest deterministic value.
fn fake_time(timestamp: i64) -> String {
    timestamp.max(1).to_string()
}

/// A path quoted for debugfs' command parser: inside double quotes, a
/// double quote is written twice.
fn debugfs_quote(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 2);
    out.push(b'"');
    for &b in path {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// The debugfs script that pins every inode's ctime and atime to
/// `timestamp` and clamps mtimes newer than it.
pub(crate) fn timestamp_script(scan: &TreeScan, timestamp: i64) -> Vec<u8> {
    let ts = timestamp.max(1);
    let mut script = Vec::new();
    for inode in &scan.inodes {
        let mut path = b"/".to_vec();
        path.extend_from_slice(inode.path.as_os_str().as_encoded_bytes());
        let quoted = debugfs_quote(&path);
        let mut field = |name: &str| {
            script.extend_from_slice(b"sif ");
            script.extend_from_slice(&quoted);
            script.extend_from_slice(format!(" {name} @{ts}\n").as_bytes());
        };
        field("ctime");
        field("atime");
        if inode.mtime > ts {
            field("mtime");
        }
    }
    script
}

/// Creates the ext4 root at `extent` of `image` holding `tree`.
pub(crate) fn make_root(
    image: &Path,
    extent: Extent,
    ids: &DiskIds,
    tree: &Path,
    scan: &TreeScan,
) -> Result<(), DiskError> {
    let work =
        tempfile::tempdir().map_err(DiskError::io("creating a temporary directory for", image))?;
    let conf = work.path().join("mke2fs.conf");
    std::fs::write(&conf, mke2fs_conf()).map_err(DiskError::io("writing", &conf))?;
    command::run(
        &format!("creating the root file system in {}", image.display()),
        mke2fs_args(image, extent, ids, tree).env("MKE2FS_CONFIG", &conf),
    )?;

    // debugfs takes the offset as `FILE?offset=N`; a symlink keeps odd
    // characters of the real path out of that syntax.
    let link = work.path().join("image");
    let target = std::path::absolute(image).map_err(DiskError::io("resolving", image))?;
    std::os::unix::fs::symlink(&target, &link).map_err(DiskError::io("linking", &link))?;
    let script = work.path().join("timestamps.debugfs");
    let mut f = std::fs::File::create(&script).map_err(DiskError::io("writing", &script))?;
    f.write_all(&timestamp_script(scan, ids.timestamp))
        .map_err(DiskError::io("writing", &script))?;
    drop(f);
    let out = command::run(
        &format!("setting root file-system timestamps in {}", image.display()),
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(format!("image?offset={}", extent.offset))
            .current_dir(work.path())
            .env("E2FSPROGS_FAKE_TIME", fake_time(ids.timestamp)),
    )?;
    // debugfs exits 0 even when a command fails; its stderr tells.
    let messages = debugfs_errors(&String::from_utf8_lossy(&out.stderr));
    if !messages.is_empty() {
        return Err(DiskError::Debugfs {
            path: image.to_path_buf(),
            messages,
        });
    }
    Ok(())
}

/// Everything debugfs printed on stderr except its version banner.
fn debugfs_errors(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .take(10)
        .collect();
    errors.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::tree::TreeInode;
    use std::path::PathBuf;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(debugfs_quote(b"/a b"), b"\"/a b\"");
        assert_eq!(debugfs_quote(b"/say \"hi\""), b"\"/say \"\"hi\"\"\"");
    }

    #[test]
    fn script_pins_ctime_atime_and_clamps_new_mtimes() {
        let scan = TreeScan {
            data_blocks: 0,
            inodes: vec![
                TreeInode {
                    path: PathBuf::new(),
                    mtime: 0,
                },
                TreeInode {
                    path: PathBuf::from("etc/new file"),
                    mtime: 2_000_000_000,
                },
            ],
        };
        let script = String::from_utf8(timestamp_script(&scan, 1_700_000_000)).unwrap();
        assert_eq!(
            script,
            "sif \"/\" ctime @1700000000\n\
             sif \"/\" atime @1700000000\n\
             sif \"/etc/new file\" ctime @1700000000\n\
             sif \"/etc/new file\" atime @1700000000\n\
             sif \"/etc/new file\" mtime @1700000000\n"
        );
    }

    #[test]
    fn zero_time_is_not_the_clock() {
        assert_eq!(fake_time(0), "1");
        assert_eq!(fake_time(1_700_000_000), "1700000000");
    }

    #[test]
    fn mke2fs_command_line() {
        let ids = DiskIds::derive(b"x", 1_700_000_000);
        let cmd = mke2fs_args(
            Path::new("out/x.raw"),
            Extent {
                offset: 129 << 20,
                size: 1 << 30,
            },
            &ids,
            Path::new("tree"),
        );
        let line = command::display_cmdline(&cmd);
        let uuid = ids.root_fs_uuid;
        assert!(line.contains(&format!("-U {uuid}")), "{line}");
        assert!(line.contains("offset=135266304,"), "{line}");
        assert!(line.contains(&format!("hash_seed={uuid}")), "{line}");
        assert!(line.ends_with("-d tree out/x.raw 262144"), "{line}");
    }

    #[test]
    fn banner_is_not_an_error() {
        assert_eq!(debugfs_errors("debugfs 1.47.0 (5-Feb-2023)\n"), "");
        assert_eq!(
            debugfs_errors("debugfs 1.47.0 (5-Feb-2023)\n/x: File not found by ext2_lookup \n"),
            "/x: File not found by ext2_lookup "
        );
    }
}
