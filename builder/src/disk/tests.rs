//! Writes real images from small trees and reads them back with the `gpt`
//! and `fatfs` crates and with the standard tools (sfdisk, sgdisk,
//! fsck.vfat, e2fsck, debugfs, qemu-img). No mounts.

use std::fs::{self, File, FileTimes};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::layout::{MIB, PartType};
use super::*;

const TS: i64 = 1_700_000_000;

fn layout() -> DiskLayout {
    DiskLayout {
        disk_size: 256 * MIB,
        esp_size: 64 * MIB,
        ids: DiskIds::derive(b"read-back", TS),
    }
}

/// Runs a checking tool and returns its stdout; panics with its output
/// when it fails.
fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (scripts/install-deps)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A miniature OSTree sysroot: an object hard-linked into a deployment,
/// a symlink, an xattr and a file from the future; `reverse` creates the
/// directories and files in the opposite order.
fn make_tree(root: &Path, reverse: bool) {
    let mut dirs = vec![
        "ostree/repo/objects/ab",
        "ostree/deploy/os/deploy/c0ffee.0/usr/bin",
        "boot",
    ];
    let mut files: Vec<usize> = (0..20).collect();
    if reverse {
        dirs.reverse();
        files.reverse();
    }
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in files {
        fs::write(root.join(format!("boot/f{i:02}")), format!("file {i}\n")).unwrap();
    }
    let object = root.join("ostree/repo/objects/ab/cdef.file");
    fs::write(&object, vec![7u8; 10_000]).unwrap();
    fs::hard_link(
        &object,
        root.join("ostree/deploy/os/deploy/c0ffee.0/usr/bin/tool"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "tool",
        root.join("ostree/deploy/os/deploy/c0ffee.0/usr/bin/alias"),
    )
    .unwrap();
    rustix::fs::setxattr(
        &object,
        "user.berth",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let future = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    File::options()
        .write(true)
        .open(root.join("boot/f00"))
        .unwrap()
        .set_times(
            FileTimes::new()
                .set_modified(future)
                .set_accessed(SystemTime::now()),
        )
        .unwrap();
}

fn esp_files(dir: &Path) -> Vec<EspFile> {
    let kernel = dir.join("vmlinuz");
    fs::write(&kernel, vec![0x4d; 300_000]).unwrap();
    vec![
        EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: EspData::Bytes(b"MZ fake".to_vec()),
        },
        EspFile {
            path: "loader/loader.conf".into(),
            data: EspData::Bytes(b"timeout 0\n".to_vec()),
        },
        EspFile {
            path: "loader/entries/berth-1+3.conf".into(),
            data: EspData::Bytes(b"title Berth\n".to_vec()),
        },
        EspFile {
            path: "berth/c0ffee.0/vmlinuz".into(),
            data: EspData::File(kernel),
        },
    ]
}

/// Whether two files have the same bytes (sha2 is slow in debug builds).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

fn with_offset(image: &Path, offset: u64) -> String {
    format!("{}?offset={offset}", image.display())
}

#[test]
fn image_reads_back_with_every_tool() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, false);
    let image = dir.path().join("x.raw");
    let layout = layout();
    let report = write_image(&image, &layout, &esp_files(dir.path()), &tree).unwrap();
    let plan = layout.plan().unwrap();
    assert_eq!(report.esp_offset, MIB);
    assert_eq!(report.root_offset, plan.root.offset);
    assert_eq!(report.apparent_size, 256 * MIB);
    assert!(report.allocated_size < 16 * MIB, "{report:?}");

    // GPT, through the gpt crate.
    let disk = gpt::GptConfig::new().open(&image).unwrap();
    assert_eq!(*disk.guid(), layout.ids.disk_guid);
    let parts = disk.partitions();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[&1].part_type_guid.guid, PartType::ESP.0);
    assert_eq!(parts[&1].part_guid, layout.ids.esp_part_guid);
    assert_eq!(parts[&1].name, "ESP");
    assert_eq!(parts[&1].first_lba, 2048);
    assert_eq!(parts[&2].part_type_guid.guid, PartType::ROOT_X86_64.0);
    assert_eq!(parts[&2].part_guid, layout.ids.root_part_guid);
    assert_eq!(parts[&2].name, "root-x86-64");
    assert_eq!(parts[&2].first_lba * 512, plan.root.offset);
    assert_eq!((parts[&2].last_lba + 1) * 512, plan.root.end());
    // Protective MBR: one 0xEE partition.
    let mut mbr = [0u8; 512];
    File::open(&image).unwrap().read_exact(&mut mbr).unwrap();
    assert_eq!(mbr[446 + 4], 0xee);
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);

    // The partitioning tools agree.
    let verify = tool(Command::new("sfdisk").arg("--verify").arg(&image));
    assert!(verify.contains("No errors detected"), "{verify}");
    let verify = tool(Command::new("sgdisk").arg("-v").arg(&image));
    assert!(verify.contains("No problems found"), "{verify}");

    check_esp(&image, plan.esp, &layout.ids);
    check_root(&image, plan.root.offset);
}

fn check_esp(image: &Path, esp: Extent, ids: &DiskIds) {
    let file = File::open(image).unwrap();
    let slice = fscommon::StreamSlice::new(&file, esp.offset, esp.end()).unwrap();
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
    assert_eq!(fs.volume_id(), ids.esp_volume_id);
    assert_eq!(fs.volume_label(), "ESP");
    let read = |p: &str| {
        let mut s = Vec::new();
        fs.root_dir()
            .open_file(p)
            .unwrap()
            .read_to_end(&mut s)
            .unwrap();
        s
    };
    assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ fake");
    assert_eq!(read("loader/entries/berth-1+3.conf"), b"title Berth\n");
    assert_eq!(read("berth/c0ffee.0/vmlinuz"), vec![0x4d; 300_000]);
    let stamp = esp::fat_datetime(TS);
    let entry = fs
        .root_dir()
        .iter()
        .map(|e| e.unwrap())
        .find(|e| e.file_name() == "loader")
        .unwrap();
    assert_eq!(entry.created(), stamp);
    assert_eq!(entry.modified(), stamp);
    drop(fs);

    // fsck.vfat on a copy of the partition.
    let copy = tempfile::NamedTempFile::new().unwrap();
    let mut src = File::open(image).unwrap();
    src.seek(SeekFrom::Start(esp.offset)).unwrap();
    std::io::copy(&mut src.take(esp.size), &mut copy.as_file()).unwrap();
    tool(Command::new("fsck.vfat").arg("-n").arg(copy.path()));
}

fn check_root(image: &Path, offset: u64) {
    let fs = with_offset(image, offset);
    tool(Command::new("e2fsck").args(["-fn", &fs]));
    let stat = |p: &str| tool(Command::new("debugfs").args(["-R", &format!("stat {p}"), &fs]));
    let tool_stat = stat("/ostree/deploy/os/deploy/c0ffee.0/usr/bin/tool");
    assert!(tool_stat.contains("Links: 2"), "{tool_stat}");
    let object = stat("/ostree/repo/objects/ab/cdef.file");
    let inode = |s: &str| s.split_whitespace().nth(1).map(str::to_string);
    assert_eq!(inode(&object), inode(&tool_stat), "one inode, two names");
    assert!(
        tool_stat.contains("user.berth (4) = \"kept\""),
        "{tool_stat}"
    );
    assert!(tool_stat.contains(" ctime: 0x6553f100:"), "{tool_stat}");
    let future = stat("/boot/f00");
    assert!(future.contains(" mtime: 0x6553f100:"), "clamped: {future}");
    assert!(future.contains(" atime: 0x6553f100:"), "{future}");
    let alias = tool(Command::new("debugfs").args([
        "-R",
        "stat /ostree/deploy/os/deploy/c0ffee.0/usr/bin/alias",
        &fs,
    ]));
    assert!(alias.contains("Fast link dest: \"tool\""), "{alias}");
}

/// Waits until the wall clock is in a later second than `t`, so files
/// created afterwards get a different ctime.
fn next_second_after(t: SystemTime) {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while secs(SystemTime::now()) <= secs(t) {
        assert!(std::time::Instant::now() < deadline, "clock did not move");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_tree(&a, false);
    next_second_after(SystemTime::now());
    // Another directory, created in the opposite order a second later.
    make_tree(&b, true);
    let esp = esp_files(dir.path());
    let (ia, ib) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    write_image(&ia, &layout(), &esp, &a).unwrap();
    write_image(&ib, &layout(), &esp, &b).unwrap();
    assert!(same_bytes(&ia, &ib), "two builds of the same tree differ");

    // And the ids matter.
    let mut other = layout();
    other.ids = DiskIds::derive(b"other", TS);
    let ic = dir.path().join("c.raw");
    write_image(&ic, &other, &esp, &a).unwrap();
    assert!(!same_bytes(&ia, &ic));
}

#[test]
fn too_small_root_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    // Sparse: the estimate goes by size, and the test stays fast.
    File::create(tree.join("big"))
        .unwrap()
        .set_len(200 * MIB)
        .unwrap();
    let image = dir.path().join("x.raw");
    let err = write_image(&image, &layout(), &[], &tree).unwrap_err();
    let DiskError::RootTooSmall { needed, available } = err else {
        panic!("{err}")
    };
    assert_eq!(available, layout().plan().unwrap().root.size);
    assert!(needed > 200 * MIB && needed > available);
    assert!(!image.exists());
}

#[test]
fn the_estimate_is_enough_for_mke2fs() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for d in 0..50 {
        let sub = tree.join(format!("dir{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..40 {
            fs::write(
                sub.join(format!("file-with-a-longish-name-{f:03}")),
                vec![b'x'; 5000],
            )
            .unwrap();
        }
    }
    fs::write(tree.join("blob"), vec![3u8; 30 * MIB as usize]).unwrap();
    let needed = root_bytes_needed(&tree).unwrap();
    let esp_size = 64 * MIB;
    let disk_size = MIB + esp_size + needed + MIB;
    let layout = DiskLayout {
        disk_size,
        esp_size,
        ids: DiskIds::derive(b"tight", TS),
    };
    assert_eq!(layout.plan().unwrap().root.size, needed);
    let image = dir.path().join("tight.raw");
    write_image(&image, &layout, &[], &tree).unwrap();
    let fs = with_offset(&image, layout.plan().unwrap().root.offset);
    tool(Command::new("e2fsck").args(["-fn", &fs]));
}

#[test]
fn esp_overflow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let huge = dir.path().join("huge");
    File::create(&huge).unwrap().set_len(70 * MIB).unwrap();
    let esp = [EspFile {
        path: "huge".into(),
        data: EspData::File(huge),
    }];
    let err = write_image(&dir.path().join("x.raw"), &layout(), &esp, &tree).unwrap_err();
    assert!(matches!(err, DiskError::EspTooSmall { .. }), "{err}");
}

#[test]
fn converts_to_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, false);
    let raw = dir.path().join("x.raw");
    write_image(&raw, &layout(), &esp_files(dir.path()), &tree).unwrap();
    let qcow: PathBuf = dir.path().join("x.qcow2");
    convert(&raw, &qcow, "qcow2").unwrap();
    let info = tool(
        Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&qcow),
    );
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 256 * MIB)),
        "{info}"
    );
    assert!(fs::metadata(&qcow).unwrap().len() < 16 * MIB);
}
