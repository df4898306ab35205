//! Applying a container's capability sets in the shim's child, just before `execve`.
//!
//! Order (as runc's `setupUser`/`finalizeNamespace`): drop from the bounding set while
//! still root, keep permitted capabilities across `setuid` (`PR_SET_KEEPCAPS`), then set
//! effective, inheritable and permitted, and clear ambient. At `execve` the kernel
//! derives the new sets: root keeps the bounding set; another user keeps none, as with
//! Docker.

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::LinuxCapabilities;

/// The typed set of an OCI capability list (`CAP_*` names); one type from the config to
/// the kernel and the seccomp profile.
pub fn convert(set: &Option<oci_spec::runtime::Capabilities>) -> CapsHashSet {
    set.iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .filter_map(|v| v.as_str().and_then(|s| s.parse::<Capability>().ok()))
        .collect()
}

/// Drops every capability outside the config's bounding set.
pub fn limit_bounding(c: &LinuxCapabilities) -> Result<(), String> {
    let keep = convert(c.bounding());
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // A capability this kernel does not know is not in the set anyway.
            if let Err(e) = caps::drop(None, CapSet::Bounding, cap) {
                if caps::runtime::procfs_all_supported(None).is_ok_and(|s| s.contains(&cap)) {
                    return Err(format!("drop {cap} from the bounding set: {e}"));
                }
            }
        }
    }
    Ok(())
}

/// Sets effective, inheritable and permitted (in an order the kernel accepts: the new
/// effective set must stay within the permitted one), and clears ambient.
pub fn apply_sets(c: &LinuxCapabilities) -> Result<(), String> {
    let effective = convert(c.effective());
    let permitted = convert(c.permitted());
    let inheritable = convert(c.inheritable());
    let set = |set: CapSet, value: &CapsHashSet| {
        caps::set(None, set, value).map_err(|e| format!("set {set:?} capabilities: {e}"))
    };
    set(
        CapSet::Effective,
        &effective.intersection(&permitted).copied().collect(),
    )?;
    set(CapSet::Inheritable, &inheritable)?;
    set(CapSet::Permitted, &permitted)?;
    set(CapSet::Effective, &effective)?;
    let _ = caps::clear(None, CapSet::Ambient);
    Ok(())
}
