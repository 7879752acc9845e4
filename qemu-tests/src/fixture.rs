//! Test images, built once and shared: every test process that asks for
//! the same manifest gets the same image, built by the first one while
//! the others wait on a lock.
//!
//! The cache key is the sha256 of the manifest and of the `berth`,
//! `berth-init` and `berthctl` binaries, so rebuilding Berth or editing
//! the manifest makes a new image. Files the manifest refers to are not
//! hashed: set `BERTH_FIXTURE_REBUILD=1` after changing them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{FlockOperation, flock};
use sha2::{Digest as _, Sha256};

use crate::command::run_stdout;
use crate::{Error, Result};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The `berth` binary the fixture runs: `$BERTH_BIN`, else the release
/// build of this workspace.
pub fn berth_bin() -> PathBuf {
    std::env::var_os("BERTH_BIN").map_or_else(
        || workspace_root().join("target/release/berth"),
        PathBuf::from,
    )
}

/// The files whose contents decide whether an image is still current:
/// the manifest, `berth`, and the host programs `berth` would put in the
/// image (from `$BERTH_INIT`/`$BERTH_BERTHCTL` or next to `berth`, as
/// `berth` itself looks them up).
fn key_files(manifest: &Path, berth: &Path) -> Vec<PathBuf> {
    let dir = berth.parent().unwrap_or(Path::new("."));
    let profile = dir.file_name().unwrap_or_default();
    let static_init = dir.parent().map(|t| {
        t.join("x86_64-unknown-linux-gnu")
            .join(profile)
            .join("berth-init")
    });
    let mut files = vec![manifest.to_path_buf(), berth.to_path_buf()];
    let from_env = |var: &str| std::env::var_os(var).map(PathBuf::from);
    files.extend(
        from_env("BERTH_INIT")
            .into_iter()
            .chain(static_init)
            .chain([dir.join("berth-init")]),
    );
    files.extend(
        from_env("BERTH_BERTHCTL")
            .into_iter()
            .chain([dir.join("berthctl")]),
    );
    // A lock server's image also carries berth-fleetlock and its file.
    if let Ok(m) = berth::manifest::Manifest::load(manifest) {
        if let Some(lock) = &m.fleet_lock_server {
            files.push(m.base_dir().join(&lock.config.value));
            files.extend(
                from_env("BERTH_FLEETLOCK")
                    .into_iter()
                    .chain([dir.join("berth-fleetlock")]),
            );
        }
    }
    files.retain(|f| f.is_file());
    files.dedup();
    files
}

/// sha256 over the files' own sha256 sums. `sha256sum` hashes the files:
/// hashing a release binary in an unoptimised test build takes seconds.
fn content_hash(files: &[PathBuf]) -> Result<String> {
    let text = run_stdout(Command::new("sha256sum").arg("--").args(files))?;
    let sums: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if sums.len() != files.len() {
        return Err(Error::Setup(format!(
            "hashing {files:?}: {} sums from sha256sum:\n{text}",
            sums.len()
        )));
    }
    let digest = Sha256::digest(sums.join("\n").as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `name` key of a manifest: the image is `<name>.raw`.
pub fn manifest_name(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    table.get("name")?.as_str().map(str::to_string)
}

/// The image built from `manifest` (absolute, or relative to the
/// workspace root), building it first if no current one is cached.
/// Panics with the build's output if the build fails.
pub fn image(manifest: &Path) -> PathBuf {
    try_image(manifest).unwrap_or_else(|e| panic!("{e}"))
}

/// [`image`], returning the failure instead of panicking.
pub fn try_image(manifest: &Path) -> Result<PathBuf> {
    let manifest = workspace_root().join(manifest);
    let fail = |reason: String| Error::Fixture {
        manifest: manifest.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&manifest).map_err(|e| fail(format!("reading it: {e}")))?;
    let name = manifest_name(&text).ok_or_else(|| fail("it has no top-level `name`".into()))?;
    let berth = berth_bin();
    if !berth.is_file() {
        return Err(fail(format!(
            "{} does not exist: build it (scripts/build) or set BERTH_BIN",
            berth.display()
        )));
    }
    let hash = content_hash(&key_files(&manifest, &berth))?;
    let stem = manifest
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let cache = workspace_root().join("target/qemu-images");
    std::fs::create_dir_all(&cache).map_err(Error::io("creating target/qemu-images"))?;
    let key = format!("{stem}-{}", &hash[..hash.len().min(16)]);
    let dir = cache.join(&key);
    let image = dir.join(format!("{name}.raw"));
    let done = dir.join(".complete");

    // One builder per key; the others wait here and then find it done.
    let lock = File::create(cache.join(format!("{key}.lock")))
        .map_err(Error::io("creating the fixture lock"))?;
    flock(&lock, FlockOperation::LockExclusive).map_err(|e| fail(format!("locking: {e}")))?;
    let rebuild = std::env::var("BERTH_FIXTURE_REBUILD").is_ok_and(|v| v == "1");
    if done.is_file() && image.is_file() && !rebuild {
        return Ok(image);
    }
    let _ = std::fs::remove_file(&done);
    std::fs::create_dir_all(&dir).map_err(Error::io("creating the fixture directory"))?;
    eprintln!(
        "qemu-tests: building {} into {}",
        manifest.display(),
        dir.display()
    );
    let log_path = dir.join("build.log");
    let log = File::create(&log_path).map_err(Error::io("creating the build log"))?;
    // Not through crate::command: a build takes minutes, and its output
    // goes to build.log as it comes (to follow it, and to keep it beside
    // the image); a failure shows the log's end.
    let status = Command::new(&berth)
        .arg("build")
        .arg(&manifest)
        .arg("--output")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(Error::io("opening the build log"))?,
        )
        .stderr(log)
        .status()
        .map_err(|e| fail(format!("running {}: {e}", berth.display())))?;
    if !status.success() || !image.is_file() {
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = output.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(fail(format!(
            "`berth build` {status}, {} {}; its output ends:\n{}",
            image.display(),
            if image.is_file() {
                "exists"
            } else {
                "was not written"
            },
            tail.join("\n")
        )));
    }
    File::create(&done).map_err(Error::io("marking the fixture complete"))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_comes_from_the_top_level_key() {
        assert_eq!(
            manifest_name("name = \"minimal\"\n[disk]\nsize = \"1G\"\n").as_deref(),
            Some("minimal")
        );
        assert_eq!(manifest_name("[disk]\nname = \"x\"\n"), None);
        assert_eq!(manifest_name("name = 3"), None);
    }

    #[test]
    fn hash_follows_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let h1 = content_hash(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(h1.len(), 64);
        assert_eq!(h1, content_hash(&[a.clone(), b.clone()]).unwrap());
        std::fs::write(&b, "three").unwrap();
        assert_ne!(h1, content_hash(&[a, b]).unwrap());
    }

    #[test]
    fn key_files_keep_only_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.toml");
        std::fs::write(&manifest, "name = \"m\"").unwrap();
        let berth = dir.path().join("release/berth");
        std::fs::create_dir_all(berth.parent().unwrap()).unwrap();
        std::fs::write(&berth, "bin").unwrap();
        std::fs::write(dir.path().join("release/berthctl"), "ctl").unwrap();
        let files = key_files(&manifest, &berth);
        assert!(files.contains(&manifest) && files.contains(&berth));
        assert!(files.contains(&dir.path().join("release/berthctl")));
        // A lock server's configuration file counts too.
        std::fs::write(
            &manifest,
            "name = \"m\"\nversion = \"1\"\n[fleet-lock-server]\nconfig = \"lock.toml\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("lock.toml"), "x").unwrap();
        std::fs::write(dir.path().join("release/berth-fleetlock"), "srv").unwrap();
        let files = key_files(&manifest, &berth);
        assert!(files.contains(&dir.path().join("lock.toml")), "{files:?}");
        assert!(files.contains(&dir.path().join("release/berth-fleetlock")));
        assert!(files.iter().all(|f| f.is_file()));
    }
}
