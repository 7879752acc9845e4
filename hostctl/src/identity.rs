//! Who this host is to the outside: its machine id (made by berth-init at
//! first boot), the app-specific id derived from it that Berth sends
//! off the host instead, and its rollout wariness.

use std::path::Path;

use berth_hostapi::machine_id::{self, MachineId};
use berth_hostapi::update::{UpdatePolicy, WARINESS_PATH};

/// Where a host's wariness comes from, for `agent status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarinessSource {
    /// [`WARINESS_PATH`] (provisioning data, or an operator).
    Host,
    /// The image's `[update] wariness`.
    Image,
    /// Derived from the host id.
    HostId,
    /// No machine id yet: the most wary.
    Default,
}

/// The host's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `/etc/machine-id`, if set.
    pub machine_id: Option<MachineId>,
    /// Berth's app-specific id of the machine.
    pub host_id: Option<MachineId>,
    /// The rollout wariness in [0, 1].
    pub wariness: f64,
    /// Where it came from.
    pub wariness_source: WarinessSource,
}

/// Reads the identity of the host at `root` under `policy`.
pub fn read(root: &Path, policy: &UpdatePolicy) -> Identity {
    let machine_id = machine_id::read(root);
    let host_id = machine_id.map(|m| m.host_id());
    let own = std::fs::read_to_string(root.join(WARINESS_PATH.trim_start_matches('/')))
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|w| (0.0..=1.0).contains(w));
    let (wariness, wariness_source) = match (own, policy.wariness, host_id) {
        (Some(w), _, _) => (w, WarinessSource::Host),
        (None, Some(w), _) => (w.clamp(0.0, 1.0), WarinessSource::Image),
        (None, None, Some(h)) => (h.wariness(), WarinessSource::HostId),
        (None, None, None) => (1.0, WarinessSource::Default),
    };
    Identity {
        machine_id,
        host_id,
        wariness,
        wariness_source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_file_wins_over_the_image_which_wins_over_the_id() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/berth")).unwrap();
        let mut policy = UpdatePolicy::default();
        let none = read(r, &policy);
        assert_eq!(none.machine_id, None);
        assert_eq!(
            (none.wariness, none.wariness_source),
            (1.0, WarinessSource::Default)
        );
        std::fs::write(
            r.join("etc/machine-id"),
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        )
        .unwrap();
        let id = read(r, &policy);
        assert_eq!(
            id.host_id.unwrap().to_string(),
            "850fc687996545cf91f79b613a99f540"
        );
        assert_eq!(id.wariness, id.host_id.unwrap().wariness());
        assert_eq!(id.wariness_source, WarinessSource::HostId);
        policy.wariness = Some(0.5);
        assert_eq!(read(r, &policy).wariness, 0.5);
        std::fs::write(r.join("etc/berth/wariness"), "0.2\n").unwrap();
        let own = read(r, &policy);
        assert_eq!(
            (own.wariness, own.wariness_source),
            (0.2, WarinessSource::Host)
        );
        // Nonsense in the file is not obeyed.
        std::fs::write(r.join("etc/berth/wariness"), "7\n").unwrap();
        assert_eq!(read(r, &policy).wariness, 0.5);
    }
}
