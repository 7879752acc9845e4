//! `berthctl rollback`: make the previous deployment the default. With a
//! pending upgrade not booted yet, that means going back to the booted one.

use std::path::Path;

use anyhow::bail;

use crate::host::Host;

/// Runs `berthctl rollback`; returns the version that boots next.
pub fn run(root: &Path) -> anyhow::Result<String> {
    let host = Host::open_locked(root)?;
    let deployments = host.sysroot.deployments();
    let booted = host.booted()?;
    let Some(booted_index) = deployments.iter().position(|d| d.equal(&booted)) else {
        bail!("the booted deployment is not in the deployment list");
    };
    let target = if booted_index != 0 {
        booted_index
    } else if deployments.len() > 1 {
        1
    } else {
        bail!("there is no other deployment to roll back to");
    };
    let mut order = vec![Clone::clone(&deployments[target])];
    order.extend(
        deployments
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != target)
            .map(|(_, d)| Clone::clone(d)),
    );
    host.reorder(&order)?;
    let info = host.deployments()?;
    let version = info.first().map(|d| d.version.clone()).unwrap_or_default();
    println!("berthctl: {version} boots next");
    Ok(version)
}
