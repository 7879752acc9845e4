//! The fixture of the container tests: two demo images written by
//! [`crate::oci`] from busybox-static, one pushed to a real local registry
//! ([`crate::registry`]), the other turned into an OCI archive and a
//! docker archive; and a test manifest generated from a template that
//! names them.
//!
//! The template (`qemu-tests/manifests/containers.toml.in`) says
//! `@REGISTRY@` for the registry's `127.0.0.1:PORT` and `@INPUTS@` for the
//! directory holding the archives. The generated manifest starts with a
//! comment carrying the images' manifest digests, so the image fixture
//! cache (keyed by the manifest text) never serves an image built from
//! other container images. The registry runs only while the fixture is
//! built or looked up, under its machine-wide lock.

use std::path::{Path, PathBuf};

use crate::oci::{self, Entry, ImageSpec, LayoutImage};
use crate::registry::{self, Registry};
use crate::{Error, Result, fixture};

/// The registry repository and tag of the web image.
pub const WEB_NAME: &str = "demo/httpd:1";
/// The page the web image serves at `/`.
pub const INDEX_HTML: &str = "<h1>hello from a berth container</h1>\n";
/// The web image's own environment variable.
pub const GREETING: &str = "GREETING=hello-from-the-image";

/// The CGI script of the web image: what the container sees of itself.
const INFO_CGI: &str = r#"#!/bin/sh
echo "Content-Type: text/plain"
echo ""
echo "greeting=$GREETING"
echo "site=$SITE"
echo "uid=$(id -u)"
echo "memory.max=$(cat /sys/fs/cgroup/memory.max)"
echo "cpu.max=$(cat /sys/fs/cgroup/cpu.max)"
if touch /probe 2>/dev/null; then echo "root=writable"; else echo "root=read-only"; fi
if touch /tmp/probe 2>/dev/null; then echo "tmp=writable"; else echo "tmp=not-writable"; fi
grep -E '^(NoNewPrivs|Seccomp|CapBnd|CapEff|CapAmb):' /proc/self/status
"#;

/// The web image: busybox httpd as user `www`, serving `/www`, with a
/// CGI script; its second layer deletes `/www/old.html` with a whiteout.
pub fn web_spec() -> Result<ImageSpec> {
    let site = vec![
        Entry::Dir("www".into()),
        Entry::File("www/index.html".into(), INDEX_HTML.into(), 0o644),
        Entry::File(
            "www/old.html".into(),
            b"removed by layer 3\n".to_vec(),
            0o644,
        ),
    ];
    let update = vec![
        Entry::File("www/.wh.old.html".into(), Vec::new(), 0o644),
        Entry::Dir("www/cgi-bin".into()),
        Entry::File("www/cgi-bin/info".into(), INFO_CGI.into(), 0o755),
    ];
    let mut base = oci::busybox_layer()?;
    base.extend(oci::users_layer());
    Ok(ImageSpec {
        layers: vec![base, site, update],
        entrypoint: vec!["/bin/busybox".into(), "httpd".into()],
        cmd: ["-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
        env: vec!["PATH=/bin".into(), GREETING.into()],
        working_dir: Some("/www".into()),
        user: Some("www".into()),
        architecture: None,
    })
}

/// A set-user-ID file of the tools image, which `berth build` must
/// unpack without its set-id bit (mode 0755).
pub const SUID_PROBE: &str = "bin/suid-probe";

/// The tools image: busybox as root; its Entrypoint + Cmd keep a shell
/// waiting (it exits 0 on SIGTERM). It carries [`SUID_PROBE`], mode 04755.
pub fn tools_spec() -> Result<ImageSpec> {
    let mut base = oci::busybox_layer()?;
    base.extend(oci::users_layer());
    base.push(Entry::File(
        SUID_PROBE.into(),
        b"#!/bin/sh\nid -u\n".to_vec(),
        0o4755,
    ));
    Ok(ImageSpec {
        layers: vec![base],
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec![
            "trap 'echo idle stopping; exit 0' TERM; echo idle up in $(pwd); while true; do sleep 3600 & wait $!; done"
                .into(),
        ],
        env: vec!["PATH=/bin".into(), GREETING.into()],
        working_dir: Some("/tmp".into()),
        user: None,
        architecture: None,
    })
}

/// Where the fixture keeps its image layouts and archives.
pub fn inputs_dir() -> PathBuf {
    fixture::workspace_root().join("target/qemu-images/container-inputs")
}

/// The demo images, written into [`inputs_dir`] with the archives made
/// from the tools image (`tools.oci.tar`, `tools.docker.tar`).
pub struct Inputs {
    /// The web image's layout.
    pub web: LayoutImage,
    /// The tools image's layout.
    pub tools: LayoutImage,
    /// The directory.
    pub dir: PathBuf,
}

impl Inputs {
    /// Writes the layouts and archives (call under the registry lock:
    /// the directory is shared).
    pub fn write() -> Result<Inputs> {
        let dir = inputs_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io("creating the container inputs"))?;
        let web = oci::write_layout(&dir.join("web"), "1", &web_spec()?)?;
        let tools = oci::write_layout(&dir.join("tools"), "1", &tools_spec()?)?;
        for (transport, file) in [
            ("oci-archive", "tools.oci.tar"),
            ("docker-archive", "tools.docker.tar"),
        ] {
            let path = dir.join(file);
            let _ = std::fs::remove_file(&path);
            let name = if transport == "docker-archive" {
                ":demo/tools:1"
            } else {
                ""
            };
            registry::copy(
                &tools.reference(),
                &format!("{transport}:{}{name}", path.display()),
                &[],
            )?;
        }
        Ok(Inputs { web, tools, dir })
    }

    /// A comment naming the images' digests, for the manifest text.
    pub fn key_comment(&self) -> String {
        format!(
            "# generated; images: web {} tools {}\n",
            self.web.manifest_digest, self.tools.manifest_digest
        )
    }
}

/// `template` with `@REGISTRY@` and `@INPUTS@` replaced.
pub fn render(template: &str, registry: &str, inputs: &Path) -> String {
    template
        .replace("@REGISTRY@", registry)
        .replace("@INPUTS@", &inputs.display().to_string())
}

/// A running registry holding the web image as [`WEB_NAME`], and the
/// inputs. The registry stops when this is dropped.
pub struct Setup {
    /// The registry.
    pub registry: Registry,
    /// The images and archives.
    pub inputs: Inputs,
}

impl Setup {
    /// Starts the registry (waiting for its lock) and pushes the web image.
    pub fn start() -> Result<Setup> {
        let registry = Registry::start(registry::registry_port())?;
        let inputs = Inputs::write()?;
        registry.push(&inputs.web.reference(), WEB_NAME)?;
        Ok(Setup { registry, inputs })
    }

    /// Writes the manifest generated from `template` (relative to the
    /// workspace root) to `dest`, with the images' digests in a comment.
    pub fn manifest(&self, template: &Path, dest: &Path) -> Result<PathBuf> {
        let template_path = fixture::workspace_root().join(template);
        let text = std::fs::read_to_string(&template_path)
            .map_err(|e| Error::Setup(format!("reading {}: {e}", template_path.display())))?;
        let text = render(
            &text,
            &format!("127.0.0.1:{}", self.registry.port),
            &self.inputs.dir,
        );
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(Error::io("creating the generated manifest's directory"))?;
        }
        std::fs::write(dest, self.inputs.key_comment() + &text)
            .map_err(Error::io("writing the generated manifest"))?;
        Ok(dest.to_path_buf())
    }

    /// The fixture image of `template`: its manifest generated under
    /// `target/qemu-images/generated/`, built (while the registry runs)
    /// unless an image of the same text is cached.
    pub fn image(&self, template: &Path) -> Result<PathBuf> {
        let stem = template
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .trim_end_matches(".in")
            .to_string();
        let dest = fixture::workspace_root()
            .join("target/qemu-images/generated")
            .join(stem);
        let manifest = self.manifest(template, &dest)?;
        fixture::try_image(&manifest)
    }
}

/// The image of the container tests' template `template`, built with a
/// registry running; panics with the reason if it cannot be had.
pub fn image(template: &Path) -> PathBuf {
    Setup::start()
        .and_then(|s| s.image(template))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_get_the_registry_and_inputs() {
        let out = render(
            "a = \"docker://@REGISTRY@/x\"\nb = \"oci-archive:@INPUTS@/t.tar\"\n",
            "127.0.0.1:5055",
            Path::new("/in"),
        );
        assert_eq!(
            out,
            "a = \"docker://127.0.0.1:5055/x\"\nb = \"oci-archive:/in/t.tar\"\n"
        );
    }
}
