//! The tree id of every image, and the Secure Boot part of `berth build`
//! (`[secure-boot]` in the manifest). After the initramfs is written and
//! before the commit, it adds to the overlay
//!
//! - the **tree id** ([`contract::TREE_ID_PATH`]), which names this tree
//!   (every image: its boot entries name the deployment by it);
//!
//! and, with `[secure-boot]`,
//!
//! - a signed **unified kernel image** (UKI, [`contract::UKI_NAME`] next to
//!   the kernel): the tree's systemd stub with `.osrel`, `.cmdline`
//!   (the image's kernel arguments and `berth.tree=<tree id>`), `.uname`,
//!   `.initrd` and `.linux` sections, signed with the db key;
//! - **systemd-boot signed** with the same key
//!   ([`contract::SIGNED_SYSTEMD_BOOT_IN_TREE`]);
//! - the **enrollment files** ([`contract::ENROLL_KEYS_IN_TREE`],
//!   [`contract::ENROLL_MODE_IN_TREE`]).
//!
//! It does not put anything on the ESP: the sysroot contract copies these
//! files there, for the first install and for every upgrade alike.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use berth_sysroot::contract;
use sha2::{Digest as _, Sha256};

use crate::command::{run_packaged, run_stdout};
use crate::manifest::{EnrollMode, Located, Manifest};

/// The signed key updates an `enroll-keys` folder must hold.
pub const ENROLL_FILES: [&str; 3] = ["PK.auth", "KEK.auth", "db.auth"];

/// The programs a Secure Boot build runs, with their Debian packages.
const TOOLS: [(&str, &str); 3] = [
    ("objcopy", "binutils"),
    ("sbsign", "sbsigntool"),
    ("sbverify", "sbsigntool"),
];

/// Where the UKI's added sections start and how each is aligned (as
/// ukify does; the 252 stub's own alignment is 512, which 4096 meets).
pub const SECTION_ALIGNMENT: u64 = 4096;

/// `[secure-boot]` with its files found and checked.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The db private key (PEM, unencrypted).
    pub key: PathBuf,
    /// Its certificate (PEM).
    pub certificate: PathBuf,
    /// The folder with [`ENROLL_FILES`], if any.
    pub enroll_keys: Option<PathBuf>,
    /// systemd-boot's `secure-boot-enroll`.
    pub enroll: EnrollMode,
}

/// What the Secure Boot step made, for the summary.
#[derive(Debug, Clone)]
pub struct UkiReport {
    /// The tree id in the UKI's command line.
    pub tree_id: String,
    /// Size of the signed UKI in bytes.
    pub size: u64,
    /// The enrollment mode written.
    pub enroll: EnrollMode,
    /// Whether key updates were put in the tree.
    pub enroll_keys: bool,
}

/// Checks `[secure-boot]`'s files and the signing tools before anything
/// is built, so a wrong path fails at once and names its manifest line.
/// `None` when the manifest has no `[secure-boot]`.
pub fn prepare(m: &Manifest) -> anyhow::Result<Option<Inputs>> {
    let Some(sb) = &m.secure_boot else {
        return Ok(None);
    };
    let read_pem = |k: &Located<PathBuf>| -> anyhow::Result<(PathBuf, String)> {
        let path = m.base_dir().join(&k.value);
        let text = std::fs::read(&path).map_err(|e| {
            m.error_at(
                &k.key,
                &k.span,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Ok((path, String::from_utf8_lossy(&text).into_owned()))
    };
    let (key, text) = read_pem(&sb.key)?;
    if let Some(msg) = private_key_problem(&text) {
        return Err(m
            .error_at(
                &sb.key.key,
                &sb.key.span,
                format!("{}: {msg}", key.display()),
            )
            .into());
    }
    let (certificate, text) = read_pem(&sb.certificate)?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(m
            .error_at(
                &sb.certificate.key,
                &sb.certificate.span,
                format!("{} is not a PEM certificate", certificate.display()),
            )
            .into());
    }
    let enroll_keys = match &sb.enroll_keys {
        None => None,
        Some(k) => {
            let dir = m.base_dir().join(&k.value);
            for f in ENROLL_FILES {
                let p = dir.join(f);
                let ok = std::fs::metadata(&p).is_ok_and(|md| md.is_file() && md.len() > 0);
                if !ok {
                    return Err(m
                        .error_at(
                            &k.key,
                            &k.span,
                            format!(
                                "{} has no {f} (it needs PK.auth, KEK.auth and db.auth, as \
                                 `berth keys generate` makes them)",
                                dir.display()
                            ),
                        )
                        .into());
                }
            }
            Some(dir)
        }
    };
    for (program, package) in TOOLS {
        if !on_path(program) {
            return Err(anyhow::anyhow!(
                "[secure-boot] needs `{program}`, which is not installed \
                 (Debian package {package}; scripts/install-deps installs it)"
            ));
        }
    }
    Ok(Some(Inputs {
        key,
        certificate,
        enroll_keys,
        enroll: sb.enroll,
    }))
}

/// Why a PEM text cannot be sbsign's key, if it cannot.
fn private_key_problem(text: &str) -> Option<&'static str> {
    if !(text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")) {
        return Some("not a PEM private key");
    }
    // sbsign would ask for the passphrase on the terminal (it has no
    // option for one) and hang or fail a build without one.
    if text.contains("ENCRYPTED") {
        return Some(
            "an encrypted private key, which sbsign cannot use without asking for its \
             passphrase: decrypt it into a file only the builder can read \
             (openssl pkey -in KEY -out PLAIN-KEY) and name that",
        );
    }
    None
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// What the tree id is computed over.
#[derive(Debug, Clone)]
pub struct TreeIdInputs<'a> {
    /// Image name.
    pub name: &'a str,
    /// OS version.
    pub version: &'a str,
    /// The build's timestamp (unix seconds).
    pub timestamp: u64,
    /// sha256 of the kernel, hex.
    pub vmlinuz_sha256: &'a str,
    /// sha256 of the initramfs, hex.
    pub initramfs_sha256: &'a str,
    /// The image's kernel arguments, one line.
    pub kargs: &'a str,
}

/// The tree id: 32 lower-case hex digits, the first 16 bytes of a sha256
/// over a domain string and the inputs, each followed by a newline.
///
/// The UKI's `.cmdline` names its deployment by this id and not by the
/// commit checksum: the UKI is inside the commit, so it cannot carry the
/// checksum of the commit that contains it.
pub fn tree_id(t: &TreeIdInputs) -> String {
    let mut h = Sha256::new();
    h.update(b"berth-tree-id\n");
    let stamp = t.timestamp.to_string();
    for part in [
        t.name,
        t.version,
        &stamp,
        t.vmlinuz_sha256,
        t.initramfs_sha256,
        t.kargs,
    ] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// `x` rounded up to a multiple of `align` (a power of two).
pub fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align) * align
}

/// Where the stub's image ends in memory: its ImageBase plus the end of
/// its highest section (VirtualAddress + VirtualSize; the last in the
/// table, for any sane PE). objcopy takes VMAs with ImageBase included.
pub fn stub_end(pe_bytes: &[u8]) -> anyhow::Result<u64> {
    let pe = goblin::pe::PE::parse(pe_bytes).context("parsing the stub's PE headers")?;
    let end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
        .max()
        .context("the stub has no sections")?;
    Ok(pe.image_base + end)
}

/// The VMAs of sections of `sizes` appended after a stub ending at
/// `stub_end`, as ukify computes them: the first at `stub_end` rounded up
/// to [`SECTION_ALIGNMENT`], each next one after the previous rounded up
/// to it. Ascending in table order, so the stub sees no overlap.
pub fn section_vmas(stub_end: u64, sizes: &[u64]) -> Vec<u64> {
    let mut next = round_up(stub_end, SECTION_ALIGNMENT);
    sizes
        .iter()
        .map(|size| {
            let vma = next;
            next = vma + round_up(*size, SECTION_ALIGNMENT);
            vma
        })
        .collect()
}

/// One section to add to the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its name, e.g. `.linux`.
    pub name: &'static str,
    /// The file that becomes its contents.
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// The objcopy arguments that add `sections` to `stub` (ending at
/// `stub_end`) and write `out`. `.linux` is code, the rest data.
pub fn objcopy_args(stub_end: u64, sections: &[Section], stub: &Path, out: &Path) -> Vec<String> {
    let sizes: Vec<u64> = sections.iter().map(|s| s.size).collect();
    let mut args = Vec::new();
    for (s, vma) in sections.iter().zip(section_vmas(stub_end, &sizes)) {
        let flags = if s.name == ".linux" {
            "code,readonly"
        } else {
            "data,readonly"
        };
        args.push("--add-section".into());
        args.push(format!("{}={}", s.name, s.file.display()));
        args.push("--change-section-vma".into());
        args.push(format!("{}={vma:#x}", s.name));
        args.push("--set-section-flags".into());
        args.push(format!("{}={flags}", s.name));
    }
    args.push(stub.display().to_string());
    args.push(out.display().to_string());
    args
}

/// The OS tree being built: the package tree under the overlay, which
/// wins where both have a file.
#[derive(Debug, Clone, Copy)]
pub struct Tree<'a> {
    /// The package tree (read only).
    pub base: &'a Path,
    /// Berth's files, written into.
    pub overlay: &'a Path,
}

impl Tree<'_> {
    /// The file at `rel` in the final tree.
    pub fn file(&self, rel: &str) -> PathBuf {
        let rel = rel.trim_start_matches('/');
        let over = self.overlay.join(rel);
        if over.exists() {
            over
        } else {
            self.base.join(rel)
        }
    }

    /// Where the overlay holds `rel`, its folder created.
    fn put(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let p = self.overlay.join(rel.trim_start_matches('/'));
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(p)
    }
}

/// What the image is: the inputs of its tree id and `.cmdline`.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    /// Image name.
    pub name: &'a str,
    /// OS version.
    pub version: &'a str,
    /// The build's timestamp.
    pub timestamp: u64,
    /// Kernel version (`usr/lib/modules/<kver>`).
    pub kver: &'a str,
    /// The image's kernel arguments, as [`contract::KARGS_PATH`] holds them.
    pub kargs: &'a str,
}

/// Writes the tree id of `image` into `tree`'s overlay and returns it.
/// Every image has one, signed or not: its boot entries name the
/// deployment by it (the boot contract in `berth_sysroot::contract`).
pub fn write_tree_id(tree: Tree, image: &Image) -> anyhow::Result<String> {
    let modules = format!("usr/lib/modules/{}", image.kver);
    let vmlinuz = tree.file(&format!("{modules}/vmlinuz"));
    let initramfs = tree.file(&format!("{modules}/initramfs.img"));
    let id = tree_id(&TreeIdInputs {
        name: image.name,
        version: image.version,
        timestamp: image.timestamp,
        vmlinuz_sha256: &sha256_file(&vmlinuz)?,
        initramfs_sha256: &sha256_file(&initramfs)?,
        kargs: image.kargs.trim(),
    });
    write_file(
        &tree.put(contract::TREE_ID_PATH)?,
        format!("{id}\n").as_bytes(),
    )?;
    Ok(id)
}

/// Writes the signed UKI (whose command line names tree `id`, from
/// [`write_tree_id`]), the signed systemd-boot and the enrollment files
/// into `tree`'s overlay; `scratch` holds the unsigned intermediates.
pub fn write(
    inputs: &Inputs,
    tree: Tree,
    image: &Image,
    id: &str,
    scratch: &Path,
) -> anyhow::Result<UkiReport> {
    let modules = format!("usr/lib/modules/{}", image.kver);
    let vmlinuz = tree.file(&format!("{modules}/vmlinuz"));
    let initramfs = tree.file(&format!("{modules}/initramfs.img"));
    let kargs = image.kargs.trim();

    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let cmdline = scratch.join("cmdline");
    write_file(
        &cmdline,
        format!("{kargs} {}{id}", contract::TREE_KARG).as_bytes(),
    )?;
    let uname = scratch.join("uname");
    write_file(&uname, image.kver.as_bytes())?;
    let stub = tree.file(contract::STUB_IN_TREE);
    let stub_bytes = std::fs::read(&stub).with_context(|| {
        format!(
            "reading systemd's EFI stub {} (package systemd-boot-efi)",
            stub.display()
        )
    })?;
    let end = stub_end(&stub_bytes).with_context(|| format!("reading {}", stub.display()))?;
    let sections = [
        (".osrel", tree.file("usr/lib/os-release")),
        (".cmdline", cmdline),
        (".uname", uname),
        (".initrd", initramfs),
        (".linux", vmlinuz),
    ]
    .into_iter()
    .map(|(name, file)| {
        let size = std::fs::metadata(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        Ok(Section { name, file, size })
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    let unsigned = scratch.join("berth.unsigned.efi");
    run_packaged(
        "assembling the unified kernel image",
        "binutils",
        Command::new("objcopy").args(objcopy_args(end, &sections, &stub, &unsigned)),
    )?;
    let uki = tree.put(&format!("{modules}/{}", contract::UKI_NAME))?;
    sign(inputs, &unsigned, &uki)?;

    let boot = tree.file(contract::SYSTEMD_BOOT_IN_TREE);
    sign(
        inputs,
        &boot,
        &tree.put(contract::SIGNED_SYSTEMD_BOOT_IN_TREE)?,
    )?;

    if let Some(dir) = &inputs.enroll_keys {
        let to = tree.overlay.join(contract::ENROLL_KEYS_IN_TREE);
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for f in ENROLL_FILES {
            let data = std::fs::read(dir.join(f))
                .with_context(|| format!("reading {}", dir.join(f).display()))?;
            write_file(&to.join(f), &data)?;
        }
    }
    write_file(
        &tree.put(contract::ENROLL_MODE_IN_TREE)?,
        format!("{}\n", inputs.enroll.name()).as_bytes(),
    )?;
    let size = std::fs::metadata(&uki)
        .with_context(|| format!("reading {}", uki.display()))?
        .len();
    Ok(UkiReport {
        tree_id: id.to_string(),
        size,
        enroll: inputs.enroll,
        enroll_keys: inputs.enroll_keys.is_some(),
    })
}

/// Signs the EFI binary `input` into `output` with the db key and checks
/// the signature against the certificate.
fn sign(inputs: &Inputs, input: &Path, output: &Path) -> anyhow::Result<()> {
    let what = format!("signing {}", input.display());
    let _ = std::fs::remove_file(output);
    run_packaged(
        &what,
        "sbsigntool",
        Command::new("sbsign")
            .arg("--key")
            .arg(&inputs.key)
            .arg("--cert")
            .arg(&inputs.certificate)
            .arg("--output")
            .arg(output)
            .arg(input),
    )?;
    let said = run_stdout(
        &format!("verifying the signature of {}", output.display()),
        Command::new("sbverify")
            .arg("--cert")
            .arg(&inputs.certificate)
            .arg(output),
    )?;
    anyhow::ensure!(
        said.contains("Signature verification OK"),
        "sbverify did not accept {}: {}",
        output.display(),
        said.trim()
    );
    std::fs::set_permissions(output, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", output.display()))?;
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;
