//! From a checked document to every change it makes, before any is made:
//! the full new contents of /etc/passwd, /etc/group, /etc/shadow, the
//! authorized_keys files, each `write_files` entry (an `append` computed
//! here, once), the service environment files, /etc/hostname and the
//! record. Everything is checked on the way (owners, groups, shells, the
//! places written, links on disk); an error here means nothing was
//! touched. [`super::txn`] then writes the result all or nothing.

use anyhow::{Context, bail};

use super::accounts::{self, Account};
use super::beneath::{Beneath, Meta, RelPath};
use super::document::{self, User, UserData, UserEntry};
use super::keys;
use super::txn::{Changes, DirChange, FileChange};
use berth_hostapi::provisioning::{IMAGE_ROOT_KEYS, INSTALLED_IMAGE_KEYS};

/// Where per-service environment files go: berth-init reads
/// `<dir>/<service>.env` (KEY=VALUE lines) before each start.
pub const SERVICE_ENV_DIR: &str = "/etc/berth/env";

/// The record of what was applied (instance id, source, digest).
pub const RECORD: &str = "/var/lib/berth/provisioned";

/// What applying changes, for the console.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new hostname.
    pub hostname: Option<String>,
    /// Accounts created.
    pub users: Vec<String>,
    /// Keys added (count).
    pub keys: usize,
    /// Files written.
    pub files: Vec<String>,
    /// Services given environment.
    pub service_env: Vec<String>,
}

/// What the record says about the document being applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The instance id (meta-data's, else one made from the digest).
    pub instance: String,
    /// Where the data came from.
    pub source: String,
    /// sha256 of user-data and meta-data.
    pub digest: String,
}

/// The changes of one document and what they amount to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to write.
    pub changes: Changes,
    /// The summary.
    pub applied: Applied,
}

fn path(p: &str) -> anyhow::Result<RelPath> {
    RelPath::parse(p).map_err(Into::into)
}

/// The changes planned so far, over the files on disk.
struct Draft<'a> {
    root: &'a Beneath,
    changes: Changes,
}

impl<'a> Draft<'a> {
    fn new(root: &'a Beneath) -> Draft<'a> {
        Draft {
            root,
            changes: Changes::default(),
        }
    }

    /// The contents `p` will have so far (planned, else on disk).
    fn current(&self, p: &RelPath) -> anyhow::Result<Option<(Vec<u8>, Meta)>> {
        if let Some(f) = self.changes.files.iter().find(|f| f.path == *p) {
            let meta = Meta {
                mode: f.mode,
                uid: f.owner.0,
                gid: f.owner.1,
            };
            return Ok(Some((f.data.clone(), meta)));
        }
        Ok(self.root.read(p)?)
    }

    fn text(&self, p: &RelPath) -> anyhow::Result<Option<(String, Meta)>> {
        match self.current(p)? {
            None => Ok(None),
            Some((data, meta)) => {
                let text = String::from_utf8(data).with_context(|| format!("{p} is not text"))?;
                Ok(Some((text, meta)))
            }
        }
    }

    /// A system file's text and mode/owner to keep (`default` if new).
    fn system_file(&self, p: &RelPath, default: u32) -> anyhow::Result<(String, u32, (u32, u32))> {
        Ok(match self.text(p)? {
            Some((t, m)) => (t, m.mode, (m.uid, m.gid)),
            None => (String::new(), default, (0, 0)),
        })
    }

    /// Plans the directory `p` (and missing parents, 0755 root) unless it
    /// exists; a link or a file on the way is an error.
    fn dir(&mut self, p: &RelPath, mode: u32, owner: (u32, u32)) -> anyhow::Result<()> {
        if self.changes.dirs.iter().any(|d| d.path == *p) || self.root.dir_exists(p)? {
            return Ok(());
        }
        if let Some(parent) = p.parent() {
            self.dir(&parent, 0o755, (0, 0))?;
        }
        self.changes.dirs.push(DirChange {
            path: p.clone(),
            mode,
            owner,
        });
        Ok(())
    }

    /// Plans `p`'s new contents; what is there now must be a regular file
    /// or nothing (never a link).
    fn put(
        &mut self,
        p: &RelPath,
        data: Vec<u8>,
        mode: u32,
        owner: (u32, u32),
    ) -> anyhow::Result<()> {
        if let Some(parent) = p.parent() {
            self.dir(&parent, 0o755, (0, 0))?;
        }
        self.root.probe_file(p)?;
        let change = FileChange {
            path: p.clone(),
            data,
            mode,
            owner,
        };
        match self.changes.files.iter_mut().find(|f| f.path == *p) {
            Some(f) => *f = change,
            None => self.changes.files.push(change),
        }
        Ok(())
    }

    fn passwd(&self) -> anyhow::Result<String> {
        Ok(self.system_file(&path("/etc/passwd")?, 0o644)?.0)
    }

    fn group(&self) -> anyhow::Result<String> {
        Ok(self.system_file(&path("/etc/group")?, 0o644)?.0)
    }

    /// A home directory as a path to write under (a top-level link of the
    /// image resolved), refused outside /etc and /var.
    fn home(&self, a: &Account) -> anyhow::Result<RelPath> {
        let home = self.root.canonical(&path(&a.home)?)?;
        if !matches!(home.first(), Some("var" | "etc")) {
            bail!(
                "the home of {} ({}) is not under /var: its SSH keys cannot be installed",
                a.name,
                a.home
            );
        }
        Ok(home)
    }

    /// Adds `keys` to `home/.ssh/authorized_keys`; returns how many.
    fn keys(&mut self, a: &Account, keys: &[String]) -> anyhow::Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let home = self.home(a)?;
        let owner = (a.uid, a.gid);
        self.dir(&home, 0o700, owner)?;
        let ssh = home.join(".ssh");
        self.dir(&ssh, 0o700, owner)?;
        let file = ssh.join("authorized_keys");
        let text = self.text(&file)?.map(|(t, _)| t).unwrap_or_default();
        let (new, added) = keys::with_keys(&text, keys);
        if added > 0 {
            self.put(&file, new.into_bytes(), 0o600, owner)?;
        }
        Ok(added)
    }

    fn root_account(&self) -> anyhow::Result<Account> {
        Ok(accounts::accounts(&self.passwd()?)
            .into_iter()
            .find(|a| a.uid == 0)
            .unwrap_or(Account {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
            }))
    }

    /// Plans the account `u` (and its home) unless it exists, then its
    /// groups and keys.
    fn user(&mut self, u: &User, applied: &mut Applied) -> anyhow::Result<()> {
        let passwd = self.passwd()?;
        let account = match accounts::accounts(&passwd)
            .into_iter()
            .find(|a| a.name == u.name)
        {
            Some(a) => a,
            None => {
                let account = self.new_account(u, &passwd)?;
                let home = self.home(&account)?;
                self.dir(&home, 0o700, (account.uid, account.gid))?;
                applied.users.push(u.name.clone());
                account
            }
        };
        let group_path = path("/etc/group")?;
        for g in u.groups.as_ref().map(|g| g.items()).unwrap_or_default() {
            let (text, mode, owner) = self.system_file(&group_path, 0o644)?;
            let Some(new) = accounts::with_member(&text, &g, &u.name) else {
                bail!("group {g} of user {} does not exist", u.name);
            };
            if new != text {
                self.put(&group_path, new.into_bytes(), mode, owner)?;
            }
        }
        applied.keys += self.keys(&account, &u.ssh_authorized_keys)?;
        Ok(())
    }

    fn new_account(&mut self, u: &User, passwd: &str) -> anyhow::Result<Account> {
        let group = self.group()?;
        let Some(id) = accounts::free_id(passwd, &group) else {
            bail!("no free uid for {}", u.name)
        };
        let shell = u.shell.clone().unwrap_or_else(|| "/bin/sh".into());
        // Read-only check of the image: links followed, nothing written.
        let in_image = self.root.path().join(shell.trim_start_matches('/'));
        if !in_image.is_file() {
            bail!("shell {shell} of user {} is not in the image", u.name);
        }
        let home = format!("/var/home/{}", u.name);
        let gecos = u.gecos.clone().unwrap_or_default();
        for (file, line, default) in [
            (
                "/etc/passwd",
                format!("{}:x:{id}:{id}:{gecos}:{home}:{shell}", u.name),
                0o644,
            ),
            ("/etc/group", format!("{}:x:{id}:", u.name), 0o644),
            // '!' locks the password: logins by SSH key only.
            ("/etc/shadow", format!("{}:!:1::::::", u.name), 0o600),
        ] {
            let p = path(file)?;
            let (text, mode, owner) = self.system_file(&p, default)?;
            self.put(
                &p,
                accounts::with_line(&text, &line).into_bytes(),
                mode,
                owner,
            )?;
        }
        Ok(Account {
            name: u.name.clone(),
            uid: id,
            gid: id,
            home,
        })
    }

    /// The uid and gid `owner` names, against the accounts as planned.
    fn owner(&self, owner: &str, shown: &str) -> anyhow::Result<(u32, u32)> {
        let (u, g) = owner.split_once(':').unwrap_or((owner, owner));
        let passwd = self.passwd()?;
        let group = self.group()?;
        let uid = u.parse().ok().or_else(|| {
            accounts::accounts(&passwd)
                .into_iter()
                .find(|a| a.name == u)
                .map(|a| a.uid)
        });
        let gid = g.parse().ok().or_else(|| accounts::group_id(&group, g));
        match (uid, gid) {
            (Some(uid), Some(gid)) => Ok((uid, gid)),
            (None, _) => bail!("owner {owner} of {shown}: there is no user {u}"),
            (_, None) => bail!("owner {owner} of {shown}: there is no group {g}"),
        }
    }

    fn write_file(&mut self, f: &document::WriteFile) -> anyhow::Result<()> {
        let p = self.root.canonical(&path(&f.path)?)?;
        // Again after the image's top-level links: /bin/x is /usr/bin/x.
        document::check_write_path(&f.path, &p)?;
        let mut data = document::file_data(f)?;
        let mode = document::file_mode(f)?;
        let owner = match &f.owner {
            Some(o) => self.owner(o, &f.path)?,
            None => (0, 0),
        };
        if f.append {
            let mut old = self.current(&p)?.map(|(d, _)| d).unwrap_or_default();
            old.append(&mut data);
            data = old;
        }
        self.put(&p, data, mode, owner)
            .with_context(|| format!("write_files {}", f.path))
    }
}

/// Plans `doc` (with the hostname to set) against the host at `root`,
/// ending with the record.
pub fn document(
    root: &Beneath,
    doc: &UserData,
    hostname: Option<&str>,
    record: &Record,
) -> anyhow::Result<Plan> {
    let mut d = Draft::new(root);
    let mut applied = Applied::default();
    if let Some(h) = hostname {
        let p = path("/etc/hostname")?;
        let (_, mode, owner) = d.system_file(&p, 0o644)?;
        d.put(&p, format!("{h}\n").into_bytes(), mode, owner)?;
        applied.hostname = Some(h.to_string());
    }
    for u in &doc.users {
        if let UserEntry::User(u) = u {
            d.user(u, &mut applied)
                .with_context(|| format!("user {}", u.name))?;
        }
    }
    if !doc.ssh_authorized_keys.is_empty() {
        let root_account = d.root_account()?;
        applied.keys += d.keys(&root_account, &doc.ssh_authorized_keys)?;
    }
    for f in &doc.write_files {
        d.write_file(f)?;
        applied.files.push(f.path.clone());
    }
    if let Some(b) = &doc.berth {
        for (svc, env) in &b.service_env {
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            let p = path(&format!("{SERVICE_ENV_DIR}/{svc}.env"))?;
            d.put(&p, text.into_bytes(), 0o600, (0, 0))?;
            applied.service_env.push(svc.clone());
        }
        if let Some(f) = &b.fleet {
            let p = path(berth_hostapi::fleet::FLEET_CONFIG_PATH)?;
            let mut json = serde_json::to_vec_pretty(f)
                .map_err(|e| std::io::Error::other(format!("writing the fleet settings: {e}")))?;
            json.push(b'\n');
            d.put(&p, json, 0o644, (0, 0))?;
            applied
                .files
                .push(berth_hostapi::fleet::FLEET_CONFIG_PATH.to_string());
        }
        if let Some(w) = b.update.as_ref().and_then(|u| u.wariness) {
            let p = path(berth_hostapi::update::WARINESS_PATH)?;
            d.put(&p, format!("{w}\n").into_bytes(), 0o644, (0, 0))?;
            applied
                .files
                .push(berth_hostapi::update::WARINESS_PATH.to_string());
        }
    }
    let text = format!(
        "{}\n{}\n{}\n",
        record.instance, record.source, record.digest
    );
    d.put(&path(RECORD)?, text.into_bytes(), 0o644, (0, 0))?;
    Ok(Plan {
        changes: d.changes,
        applied,
    })
}

/// Plans root's authorized_keys for the booted image's keys (see
/// [`keys`]), and the note of which keys those were. Empty when nothing
/// changes.
pub fn image_keys(root: &Beneath) -> anyhow::Result<Changes> {
    let mut d = Draft::new(root);
    let image = d
        .text(&path(&format!("/{IMAGE_ROOT_KEYS}"))?)?
        .map(|(t, _)| keys::key_lines(&t))
        .unwrap_or_default();
    let note_path = path(&format!("/{INSTALLED_IMAGE_KEYS}"))?;
    let note = d.text(&note_path)?.map(|(t, _)| t);
    if image.is_empty() && note.as_deref().unwrap_or("").is_empty() {
        return Ok(Changes::default());
    }
    let account = d.root_account()?;
    let home = d.home(&account)?;
    let file = home.join(".ssh").join("authorized_keys");
    let text = d.text(&file)?.map(|(t, _)| t).unwrap_or_default();
    // Before the first note, older versions may have merged image keys in
    // with the others.
    let legacy = if note.is_none() {
        let mut l = keys::deployments_image_keys(root.path());
        l.extend(image.iter().cloned());
        l
    } else {
        Vec::new()
    };
    let new = keys::with_image_keys(&text, &image, &legacy);
    if new != text {
        d.dir(&home, 0o700, (0, 0))?;
        d.dir(&home.join(".ssh"), 0o700, (0, 0))?;
        d.put(&file, new.into_bytes(), 0o600, (account.uid, account.gid))?;
    }
    let note_text: String = image.iter().map(|k| format!("{k}\n")).collect();
    if note.as_deref() != Some(note_text.as_str()) {
        d.put(&note_path, note_text.into_bytes(), 0o644, (0, 0))?;
    }
    Ok(d.changes)
}
