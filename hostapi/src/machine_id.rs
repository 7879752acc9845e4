//! The host's identity: `/etc/machine-id` as systemd defines it
//! (machine-id(5): 128 bits, 32 lower-case hex digits and a newline, made
//! once at first boot), and the app-specific ids derived from it as
//! `sd_id128_get_machine_app_specific` does, so that what leaves the host
//! (a rollout position, a fleet registry key) never reveals the machine id
//! itself.
//!
//! berth-init writes the file at first boot; libostree's /etc merge keeps
//! it across upgrades and rollbacks; an image ships it empty, so every
//! machine made from one image gets its own.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Where the machine id lives.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Berth's application id for [`MachineId::app_specific`] (made once with
/// `systemd-id128 new`): the id Berth's update agent (and, later, its
/// fleet registry) knows a host by.
pub const BERTH_APP_ID: MachineId = MachineId([
    0xe3, 0xa0, 0x51, 0x0b, 0xa9, 0xd9, 0x49, 0xc5, 0x8b, 0x9a, 0x75, 0x37, 0x17, 0xb2, 0x81, 0x0f,
]);

/// A 128-bit id: a machine id, an application id, or an id derived from both.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId(pub [u8; 16]);

impl std::fmt::Debug for MachineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MachineId({self})")
    }
}

impl std::fmt::Display for MachineId {
    /// 32 lower-case hex digits, as in `/etc/machine-id`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl MachineId {
    /// Parses the contents of `/etc/machine-id`: 32 hex digits, then at
    /// most a newline. `None` for anything else, which systemd treats as
    /// "not set yet" too: an empty file, `uninitialized`, all zeros.
    pub fn parse(text: &str) -> Option<MachineId> {
        let hex = text.strip_suffix('\n').unwrap_or(text);
        if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        (id != [0; 16]).then_some(MachineId(id))
    }

    /// A new id from 16 random bytes, marked as a version 4 (random)
    /// UUID as systemd's `sd_id128_randomize` does.
    pub fn from_random(bytes: [u8; 16]) -> MachineId {
        MachineId(bytes).as_v4()
    }

    /// The id of this machine for application `app`: HMAC-SHA256 keyed
    /// by the machine id over the application id, its first 16 bytes
    /// made a version 4 UUID (systemd's `sd_id128_get_app_specific`).
    /// One-way: knowing it tells nothing of the machine id.
    pub fn app_specific(&self, app: &MachineId) -> MachineId {
        // HMAC pads a key shorter than the hash's block (64 bytes) with
        // zeros: pad it here, and the key has the one length that cannot
        // be refused (no error path in code PID 1 runs).
        let mut key = [0u8; 64];
        key[..16].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&key.into());
        mac.update(&app.0);
        let digest = mac.finalize().into_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        MachineId(id).as_v4()
    }

    /// Berth's id for this machine: [`MachineId::app_specific`] for
    /// [`BERTH_APP_ID`].
    pub fn host_id(&self) -> MachineId {
        self.app_specific(&BERTH_APP_ID)
    }

    /// The host's default rollout wariness, a number in (0, 1] that stays
    /// the same for the life of the machine id: SHA-256 of the id, its
    /// first 53 bits as a fraction. Hosts with a low value take a staged
    /// release first. (A hash, not the id's own bits: the id has fixed
    /// version bits.)
    pub fn wariness(&self) -> f64 {
        let digest = Sha256::digest(self.0);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let bits = u64::from_be_bytes(first) >> 11;
        (bits + 1) as f64 / (1u64 << 53) as f64
    }

    fn as_v4(mut self) -> MachineId {
        self.0[6] = (self.0[6] & 0x0f) | 0x40;
        self.0[8] = (self.0[8] & 0x3f) | 0x80;
        self
    }
}

/// Reads the machine id under `root` (`/` on a host); `None` when the file
/// is missing or holds no id yet.
pub fn read(root: &std::path::Path) -> Option<MachineId> {
    let text = std::fs::read_to_string(root.join(MACHINE_ID_PATH.trim_start_matches('/'))).ok()?;
    MachineId::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex: &str) -> MachineId {
        MachineId::parse(hex).unwrap()
    }

    #[test]
    fn parses_only_what_systemd_accepts() {
        let m = id("2e074e9b299c41a59923c51ae16f279b\n");
        assert_eq!(m.to_string(), "2e074e9b299c41a59923c51ae16f279b");
        for bad in [
            "",
            "\n",
            "uninitialized\n",
            "00000000000000000000000000000000\n",
            "2e074e9b299c41a59923c51ae16f279",
            "2e074e9b299c41a59923c51ae16f279bb",
            "2e074e9b-299c-41a5-9923-c51ae16f279b",
            "2e074e9b299c41a59923c51ae16f279b\n\n",
            "+e074e9b299c41a59923c51ae16f279b",
        ] {
            assert_eq!(MachineId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn app_specific_ids_match_systemd() {
        // The example of lucab/libsystemd-rs (src/id128.rs), a port of
        // sd_id128_get_app_specific.
        assert_eq!(
            id("2e074e9b299c41a59923c51ae16f279b")
                .app_specific(&id("033b1b9b264441fcaa173e9e5bf35c5a"))
                .to_string(),
            "4d4a86c9c6644a479560ded5d19a30c5"
        );
        // systemd 252 on Debian 12 with this machine id in /etc/machine-id:
        // `systemd-id128 machine-id --app-specific=e3a0510ba9d949c58b9a753717b2810f`.
        assert_eq!(
            id("3d1219c7c4c5404aaa1f6d2a48adfda4").host_id().to_string(),
            "850fc687996545cf91f79b613a99f540"
        );
    }

    #[test]
    fn random_ids_are_version_4_uuids() {
        let m = MachineId::from_random([0xff; 16]);
        assert_eq!(m.to_string(), "ffffffffffff4fffbfffffffffffffff");
        let m = MachineId::from_random([0; 16]);
        assert!(MachineId::parse(&m.to_string()).is_some());
    }

    #[test]
    fn wariness_spreads_evenly_over_the_unit_interval() {
        // 10,000 hosts, each a machine id made from a counter, through the
        // app-specific id as the agent does. Ten buckets expect 1,000 each;
        // the binomial standard deviation is 30, and the tolerance is five
        // of them (150): a biased or clumping derivation fails, chance
        // alone practically never does (and the ids are fixed, so a pass is
        // a pass every time).
        let mut buckets = [0u32; 10];
        for i in 0u32..10_000 {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&Sha256::digest(i.to_be_bytes())[..16]);
            let w = MachineId::from_random(bytes).host_id().wariness();
            assert!(w > 0.0 && w <= 1.0, "{w}");
            buckets[((w * 10.0) as usize).min(9)] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (850..=1150).contains(n),
                "bucket {i} holds {n} of 10,000: {buckets:?}"
            );
        }
    }

    #[test]
    fn wariness_is_stable_per_host() {
        let h = id("3d1219c7c4c5404aaa1f6d2a48adfda4").host_id();
        assert_eq!(h.wariness(), h.wariness());
        assert_ne!(
            h.wariness(),
            id("2e074e9b299c41a59923c51ae16f279b").host_id().wariness()
        );
    }

    #[test]
    fn reads_the_file_under_a_root() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read(t.path()), None);
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/machine-id"), "").unwrap();
        assert_eq!(read(t.path()), None);
        std::fs::write(
            t.path().join("etc/machine-id"),
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        )
        .unwrap();
        assert_eq!(read(t.path()), Some(id("3d1219c7c4c5404aaa1f6d2a48adfda4")));
    }
}
