//! Network modes: where a VM's TAP device is plugged in.
//!
//! - [`NetworkMode::Isolated`]: a bridge with no uplink and no host
//!   address (IPv6 off too, and the host's IPv4 stack deaf to it: strict
//!   reverse-path filtering, no ARP replies), shared only by the VMs
//!   attached to it.
//! - [`NetworkMode::Bridged`]: an existing host bridge, so VMs sit on the
//!   host's LAN. Nothing is created; attaching enslaves the TAP.
//! - [`NetworkMode::Nat`]: a bridge holding the gateway address of a
//!   private subnet, IPv4 forwarding on the bridge and the uplink, and an
//!   nftables table that masquerades the subnet out of the uplink and
//!   forwards only the subnet's traffic (out, and replies back in).
//!
//! [`Network::setup`] is idempotent: run again with the same mode it finds
//! what it made before (bridges carry the alias `vmkit-net <mode>`; NAT
//! tables are named `vmkit_nat_<bridge>`) and leaves it as it is. It
//! records what it created in a [`NetworkRecord`] (serializable, so a VMM
//! can keep it across restarts); [`Network::teardown`] removes exactly
//! that, is idempotent, and never deletes what existed before: a bridge
//! without vmkit's alias, links it did not enslave, other nftables tables,
//! a forwarding setting that was already on.
//!
//! Each setup of an isolated or NAT network records its process as an owner (see
//! [`owners`](crate::owners)). A setup that finds vmkit's bridge with no ports and only
//! owners that no longer exist (a VMM killed before its teardown) takes it over and says
//! so: [`Network::leftover`]. Its teardown then removes the network as usual.
//!
//! Several processes may set up the same network at once (VMs starting
//! together): one creates the bridge, the others wait for it to carry
//! vmkit's alias and join it. A teardown is not ordered against another
//! process's setup, though: if the last VM leaves while a new one is
//! joining, the newcomer's `attach` can fail with
//! [`ModeError::NoSuchLink`]; a VMM that starts and stops VMs on one
//! network concurrently serializes those calls (e.g. with a lock file).
//!
//! Everything happens in the network namespace of the calling thread.
//! The NAT mode needs the `nft` binary (Debian: `nftables`). DHCP and DNS
//! for the private subnet are the VMM's to provide (or configure guests
//! statically).

use std::net::Ipv4Addr;

use crate::netlink::{Link, NetlinkError, Rtnl};
use crate::nft::{self, NftError};
use crate::owners::{Leftover, OwnerRecord};
use crate::sysctl;
use crate::tap::MAX_IFNAME_LEN;

/// The NAT mode's settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NatConfig {
    /// The bridge to create for the subnet.
    pub bridge: String,
    /// The host's address on the subnet, the VMs' gateway (e.g. 10.0.2.1).
    pub gateway: Ipv4Addr,
    /// The subnet's prefix length, 8 to 30 (e.g. 24).
    pub prefix_len: u8,
    /// The host interface that leads out (e.g. `eth0`).
    pub uplink: String,
}

impl NatConfig {
    /// The subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(u32::from(self.gateway) & mask)
    }
}

/// Where a VM's TAP device goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// A private bridge named `bridge`, no uplink, no host address.
    Isolated {
        /// The bridge (created if absent).
        bridge: String,
    },
    /// An existing host bridge.
    Bridged {
        /// The bridge (must exist).
        bridge: String,
    },
    /// A private subnet behind the host, masqueraded.
    Nat(NatConfig),
}

impl NetworkMode {
    /// The bridge VMs are attached to.
    pub fn bridge(&self) -> &str {
        match self {
            NetworkMode::Isolated { bridge } | NetworkMode::Bridged { bridge } => bridge,
            NetworkMode::Nat(c) => &c.bridge,
        }
    }

    fn alias(&self) -> Option<&'static str> {
        match self {
            NetworkMode::Isolated { .. } => Some("vmkit-net isolated"),
            NetworkMode::Nat(_) => Some("vmkit-net nat"),
            NetworkMode::Bridged { .. } => None,
        }
    }
}

/// What [`Network::setup`] and [`Network::attach`] created or changed:
/// exactly what [`Network::teardown`] undoes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkRecord {
    /// The mode.
    pub mode: NetworkMode,
    /// The bridge is vmkit's (created by this or an earlier setup).
    pub bridge_created: bool,
    /// The NAT table, if one was created.
    pub nft_table: Option<String>,
    /// Forwarding on the NAT uplink was off before vmkit turned it on.
    pub uplink_forwarding_enabled: bool,
    /// Links vmkit enslaved to the bridge.
    pub attached: Vec<Port>,
}

/// A link [`Network::attach`] enslaved, and what it changed on it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Port {
    /// The link's name.
    pub name: String,
    /// The link was down and vmkit brought it up.
    pub brought_up: bool,
    /// IPv6 was on and vmkit turned it off (a bridge port needs no
    /// addresses of its own; without IPv6 the host sends no neighbour
    /// discovery from it into the VM).
    pub ipv6_disabled: bool,
}

impl NetworkRecord {
    /// The names of the attached links.
    pub fn attached_names(&self) -> Vec<&str> {
        self.attached.iter().map(|p| p.name.as_str()).collect()
    }
}

/// How long [`wait_for_label`] gives a concurrent setup to label the bridge it created.
const LABEL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The bridge `name` once it carries `alias`: the one a concurrent setup of the same
/// network has just created. Anything else by that name is [`ModeError::BridgeInUse`].
fn wait_for_label(rtnl: &mut Rtnl, name: &str, alias: &str) -> Result<Link, ModeError> {
    let deadline = std::time::Instant::now() + LABEL_WAIT;
    loop {
        match rtnl.link(name)? {
            Some(l) if l.is_bridge() && l.alias.as_deref() == Some(alias) => return Ok(l),
            // Not labelled yet: a bridge freshly created by another setup, or not ours.
            Some(l) if l.is_bridge() && l.alias.is_none() => {}
            Some(l) => {
                return Err(ModeError::BridgeInUse {
                    name: name.to_string(),
                    alias: l.alias,
                })
            }
            // Deleted again (a teardown won the race): nothing to join.
            None => {
                return Err(ModeError::NoSuchLink {
                    name: name.to_string(),
                })
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(ModeError::BridgeInUse {
                name: name.to_string(),
                alias: None,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether vmkit's bridge `br`, found by a setup (`found`; not created by it), was left
/// behind: no ports, and no owner but `me` that still runs. Removes the records of owners
/// that are gone, whatever the answer.
fn left_behind(
    rtnl: &mut Rtnl,
    br: &Link,
    me: &OwnerRecord,
    found: bool,
) -> Result<Option<Leftover>, ModeError> {
    let owners_error = |source| ModeError::Owners {
        path: me.path().display().to_string(),
        source,
    };
    let (live, gone): (Vec<_>, Vec<_>) = me
        .others()
        .map_err(owners_error)?
        .into_iter()
        .partition(|(process, _)| process.is_running());
    for (_, path) in &gone {
        // Best effort: another setup may be pruning the same record.
        let _ = std::fs::remove_file(path);
    }
    if !found || !live.is_empty() {
        return Ok(None);
    }
    if rtnl.links()?.iter().any(|l| l.master == Some(br.index)) {
        // Someone's port is on it: not ours to call abandoned.
        return Ok(None);
    }
    let mut owners: Vec<_> = gone.into_iter().map(|(process, _)| process).collect();
    owners.sort_by_key(|p| (p.pid, p.start_time));
    owners.dedup();
    Ok(Some(Leftover {
        bridge: br.name.clone(),
        owners,
    }))
}

/// Errors of the network modes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModeError {
    /// An interface name is empty, too long, or has characters other than
    /// letters, digits, `-`, `_` and `.`.
    #[error("interface name {name:?} is invalid: 1 to 15 of [A-Za-z0-9._-]")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// The NAT subnet is unusable.
    #[error("NAT subnet {gateway}/{prefix_len} is invalid: {reason}")]
    InvalidSubnet {
        /// The gateway.
        gateway: Ipv4Addr,
        /// The prefix length.
        prefix_len: u8,
        /// Why.
        reason: &'static str,
    },
    /// A link that must exist does not.
    #[error("no link named {name:?}")]
    NoSuchLink {
        /// The name.
        name: String,
    },
    /// A link that must be a bridge is not.
    #[error("link {name:?} is not a bridge (kind {kind:?})")]
    NotABridge {
        /// The name.
        name: String,
        /// Its kind.
        kind: Option<String>,
    },
    /// A link of the bridge's name exists and is not vmkit's for this mode.
    #[error("link {name:?} exists and was not made by vmkit for this mode (alias {alias:?}); pick another bridge name")]
    BridgeInUse {
        /// The name.
        name: String,
        /// Its alias.
        alias: Option<String>,
    },
    /// A link to attach is already enslaved elsewhere.
    #[error("link {name:?} is already enslaved to link index {master}")]
    AlreadyEnslaved {
        /// The link.
        name: String,
        /// Its master's index.
        master: u32,
    },
    /// The bridge still has ports vmkit did not attach: deleting it would
    /// cut them off.
    #[error("bridge {bridge:?} still has ports {ports:?} that this network did not attach; detach them first")]
    BridgeBusy {
        /// The bridge.
        bridge: String,
        /// The other ports.
        ports: Vec<String>,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// An nftables operation failed.
    #[error(transparent)]
    Nft(#[from] NftError),
    /// This process could not be recorded as an owner of the network, or the other owners
    /// could not be read (see [`owners`](crate::owners)).
    #[error("cannot keep the owner records of the network in {path}")]
    Owners {
        /// The record or its directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {path}")]
    Sysctl {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn check_name(name: &str) -> Result<(), ModeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ModeError::InvalidName {
            name: name.to_string(),
        })
    }
}

fn sysctl_err(iface: &str) -> impl Fn(std::io::Error) -> ModeError + '_ {
    move |source| ModeError::Sysctl {
        path: sysctl::forwarding_path(iface).display().to_string(),
        source,
    }
}

fn validate(mode: &NetworkMode) -> Result<(), ModeError> {
    check_name(mode.bridge())?;
    if let NetworkMode::Nat(c) = mode {
        check_name(&c.uplink)?;
        let bad = |reason| ModeError::InvalidSubnet {
            gateway: c.gateway,
            prefix_len: c.prefix_len,
            reason,
        };
        if !(8..=30).contains(&c.prefix_len) {
            return Err(bad("the prefix length must be 8 to 30"));
        }
        let host_bits = u32::MAX >> c.prefix_len;
        let host = u32::from(c.gateway) & host_bits;
        if host == 0 || host == host_bits {
            return Err(bad("the gateway is the network or the broadcast address"));
        }
        if c.gateway.is_loopback() || c.gateway.is_multicast() || c.gateway.is_unspecified() {
            return Err(bad("the gateway is not a unicast address"));
        }
        if c.uplink == c.bridge {
            return Err(bad("the uplink is the bridge itself"));
        }
    }
    Ok(())
}

/// A VM network: the mode, and what vmkit created for it.
///
/// ```no_run
/// use vmkit_net::{Network, NetworkMode, NatConfig, Tap};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut net = Network::setup(NetworkMode::Nat(NatConfig {
///     bridge: "vmkbr0".into(),
///     gateway: "10.0.2.1".parse()?,
///     prefix_len: 24,
///     uplink: "eth0".into(),
/// }))?;
/// let tap = Tap::open("vmtap%d")?;
/// net.attach(tap.name())?;
/// // Keep `net.record()` (serde) to tear down after a restart if needed.
/// // … run the VM with `tap` as its virtio-net backend …
/// net.teardown()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Network {
    record: NetworkRecord,
    /// This network's owner record, for vmkit-made bridges set up by this process.
    owner: Option<OwnerRecord>,
    /// The network as setup found it, if it was left behind by processes that are gone.
    leftover: Option<Leftover>,
}

impl Network {
    /// Puts the mode in place (idempotently); see the module documentation.
    /// On failure, whatever this call created is removed again. The isolated
    /// and NAT modes write an owner record under `/run/vmkit-net` (see
    /// [`owners`](crate::owners)), so they need write access there.
    pub fn setup(mode: NetworkMode) -> Result<Network, ModeError> {
        validate(&mode)?;
        let mut net = Network {
            record: NetworkRecord {
                mode,
                bridge_created: false,
                nft_table: None,
                uplink_forwarding_enabled: false,
                attached: Vec::new(),
            },
            owner: None,
            leftover: None,
        };
        let mut rtnl = Rtnl::new()?;
        match net.build(&mut rtnl) {
            Ok(()) => Ok(net),
            Err(e) => {
                // Best effort: the first error is the one to report.
                let _ = net.teardown();
                Err(e)
            }
        }
    }

    /// A network from a record kept earlier, e.g. to tear it down after
    /// a VMM restart. The record is trusted to be what `setup` wrote;
    /// teardown still checks aliases and names before deleting anything.
    pub fn from_record(record: NetworkRecord) -> Network {
        Network {
            record,
            owner: None,
            leftover: None,
        }
    }

    /// Whether setup found the network left behind by processes that no longer exist, and
    /// took it over (see the module documentation); a VMM tells its user.
    pub fn leftover(&self) -> Option<&Leftover> {
        self.leftover.as_ref()
    }

    /// What was created.
    pub fn record(&self) -> &NetworkRecord {
        &self.record
    }

    /// The mode.
    pub fn mode(&self) -> &NetworkMode {
        &self.record.mode
    }

    /// The bridge name.
    pub fn bridge(&self) -> &str {
        self.record.mode.bridge()
    }

    fn build(&mut self, rtnl: &mut Rtnl) -> Result<(), ModeError> {
        let mode = self.record.mode.clone();
        let bridge = mode.bridge();
        match &mode {
            NetworkMode::Bridged { .. } => {
                let link = rtnl.link(bridge)?.ok_or_else(|| ModeError::NoSuchLink {
                    name: bridge.to_string(),
                })?;
                if !link.is_bridge() {
                    return Err(ModeError::NotABridge {
                        name: link.name,
                        kind: link.kind,
                    });
                }
            }
            NetworkMode::Isolated { .. } => {
                self.own_bridge(rtnl)?;
                // A bridge interface that is up hands the host's stack whatever the VMs
                // address to it (ARP for the host's other addresses, then packets to them),
                // address or not: shut that door, so that the VMs reach only each other.
                for (key, value) in sysctl::SHUT_OUT_IPV4 {
                    let path = sysctl::ipv4_conf_path(bridge, key);
                    std::fs::write(&path, value)
                        .map_err(|source| ModeError::Sysctl { path, source })?;
                }
            }
            NetworkMode::Nat(c) => {
                if rtnl.link(&c.uplink)?.is_none() {
                    return Err(ModeError::NoSuchLink {
                        name: c.uplink.clone(),
                    });
                }
                let br = self.own_bridge(rtnl)?;
                let have = rtnl.ipv4_addrs(br.index)?;
                if !have.contains(&(c.gateway, c.prefix_len)) {
                    rtnl.add_ipv4_addr(&br, c.gateway, c.prefix_len)?;
                }
                // The bridge is ours: its forwarding goes with it.
                sysctl::set_forwarding(bridge, true).map_err(sysctl_err(bridge))?;
                self.nat_rules(c)?;
            }
        }
        Ok(())
    }

    /// Creates the bridge, or recognizes the one an earlier setup made;
    /// brings it up.
    fn own_bridge(&mut self, rtnl: &mut Rtnl) -> Result<Link, ModeError> {
        let name = self.record.mode.bridge().to_string();
        let alias = self.record.mode.alias().unwrap_or_default();
        // Recorded before the bridge is looked for or made: a bridge in use always has a
        // live owner (see the owners module).
        let owner = OwnerRecord::create(&name).map_err(|(path, source)| ModeError::Owners {
            path: path.display().to_string(),
            source,
        })?;
        let owner = &*self.owner.insert(owner);
        let mut found = true;
        let link = match rtnl.link(&name)? {
            Some(l) if l.is_bridge() && l.alias.as_deref() == Some(alias) => l,
            // Maybe one a concurrent setup of this network has just created and is
            // about to label (a foreign one costs a short wait before the error).
            Some(l) if l.is_bridge() && l.alias.is_none() => wait_for_label(rtnl, &name, alias)?,
            Some(l) => {
                return Err(ModeError::BridgeInUse {
                    name,
                    alias: l.alias,
                })
            }
            None => match rtnl.add_bridge(&name) {
                Ok(()) => {
                    found = false;
                    self.record.bridge_created = true;
                    let l = rtnl
                        .link(&name)?
                        .ok_or_else(|| ModeError::NoSuchLink { name: name.clone() })?;
                    rtnl.set_alias(&l, alias)?;
                    l
                }
                // Another setup of this network (another VM starting) created it
                // between the lookup and here; it labels it next.
                Err(NetlinkError::Request { source, .. })
                    if source.raw_os_error() == Some(libc::EEXIST) =>
                {
                    wait_for_label(rtnl, &name, alias)?
                }
                Err(e) => return Err(e.into()),
            },
        };
        self.record.bridge_created = true;
        self.leftover = left_behind(rtnl, &link, owner, found)?;
        // No IPv6 (hence no link-local address) on vmkit's bridges: the
        // isolated mode keeps the host off the segment, the NAT mode is IPv4.
        sysctl::disable_ipv6(&name).map_err(|source| ModeError::Sysctl {
            path: format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"),
            source,
        })?;
        if !link.up {
            rtnl.set_up(&link, true)?;
        }
        Ok(link)
    }

    fn nat_rules(&mut self, c: &NatConfig) -> Result<(), ModeError> {
        let table = nft::table_name(&c.bridge);
        let on = sysctl::forwarding(&c.uplink).map_err(sysctl_err(&c.uplink))?;
        // vmkit owes the uplink a reset to "off" if it is off now, or if a
        // NAT table (an earlier version of ours, or another network's) on
        // this uplink already owes it.
        let mut owed = !on;
        for t in nft::vmkit_tables()? {
            owed |= nft::marks(&t)?
                .iter()
                .any(|(uplink, was_off)| *uplink == c.uplink && *was_off);
        }
        // `nft -f` applies all or nothing: the table is recorded once it exists.
        nft::apply_nat(&nft::NatRules {
            table: table.clone(),
            bridge: c.bridge.clone(),
            uplink: c.uplink.clone(),
            network: c.network(),
            prefix_len: c.prefix_len,
            forwarding_was_off: owed,
        })?;
        self.record.nft_table = Some(table);
        self.record.uplink_forwarding_enabled = owed;
        if !on {
            sysctl::set_forwarding(&c.uplink, true).map_err(sysctl_err(&c.uplink))?;
        }
        Ok(())
    }

    /// Enslaves the link `name` (a VM's TAP) to the bridge, turns IPv6
    /// off on it and brings it up. Idempotent: a link already on this
    /// bridge is fine.
    pub fn attach(&mut self, name: &str) -> Result<(), ModeError> {
        check_name(name)?;
        let mut rtnl = Rtnl::new()?;
        let bridge = self.bridge().to_string();
        let br = rtnl
            .link(&bridge)?
            .ok_or(ModeError::NoSuchLink { name: bridge })?;
        let link = rtnl.link(name)?.ok_or_else(|| ModeError::NoSuchLink {
            name: name.to_string(),
        })?;
        if let Some(master) = link.master.filter(|&m| m != br.index) {
            return Err(ModeError::AlreadyEnslaved {
                name: name.to_string(),
                master,
            });
        }
        let known = self.record.attached.iter().position(|p| p.name == name);
        let mut port = match known.and_then(|i| self.record.attached.get(i)) {
            Some(p) => p.clone(),
            None => Port {
                name: name.to_string(),
                brought_up: false,
                ipv6_disabled: false,
            },
        };
        // Record each change as it is made, so that a failure midway
        // still leaves a record teardown can undo.
        let result = (|| {
            if sysctl::ipv6_enabled(name) {
                sysctl::disable_ipv6(name).map_err(|source| ModeError::Sysctl {
                    path: format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"),
                    source,
                })?;
                port.ipv6_disabled = true;
            }
            if link.master.is_none() {
                rtnl.set_master(&link, Some(br.index))?;
            }
            if !link.up {
                rtnl.set_up(&link, true)?;
                port.brought_up = true;
            }
            Ok(())
        })();
        match known.and_then(|i| self.record.attached.get_mut(i)) {
            Some(p) => *p = port,
            None => self.record.attached.push(port),
        }
        result
    }

    /// Frees link `name` from the bridge if this network attached it and
    /// it is still there, and undoes what attaching changed on it.
    /// Idempotent.
    pub fn detach(&mut self, name: &str) -> Result<(), ModeError> {
        let mut rtnl = Rtnl::new()?;
        self.detach_with(&mut rtnl, name)
    }

    fn detach_with(&mut self, rtnl: &mut Rtnl, name: &str) -> Result<(), ModeError> {
        let Some(i) = self.record.attached.iter().position(|p| p.name == name) else {
            return Ok(());
        };
        let Some(port) = self.record.attached.get(i).cloned() else {
            return Ok(());
        };
        let br = rtnl.link(self.record.mode.bridge())?;
        if let Some(link) = rtnl.link(name)? {
            if br.is_some_and(|b| link.master == Some(b.index)) {
                rtnl.set_master(&link, None)?;
            }
            if port.brought_up && link.up {
                rtnl.set_up(&link, false)?;
            }
            if port.ipv6_disabled {
                sysctl::enable_ipv6(name).map_err(|source| ModeError::Sysctl {
                    path: format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"),
                    source,
                })?;
            }
        }
        self.record.attached.remove(i);
        Ok(())
    }

    /// Removes what this network created (see the module documentation).
    /// Idempotent; the record is emptied as things go. A step that fails
    /// does not stop the others (a NAT table that cannot be deleted still
    /// lets the bridge go): the first error is returned, and what failed
    /// stays in the record for another try.
    pub fn teardown(&mut self) -> Result<(), ModeError> {
        let mut rtnl = Rtnl::new()?;
        let bridge = self.bridge().to_string();
        let alias = self.record.mode.alias();
        // Refuse to cut off ports this network did not attach, before
        // changing anything.
        let ours = |l: &Link| alias.is_some() && l.is_bridge() && l.alias.as_deref() == alias;
        let br = rtnl.link(&bridge)?;
        if self.record.bridge_created {
            if let Some(br) = br.as_ref().filter(|b| ours(b)) {
                let others: Vec<String> = rtnl
                    .links()?
                    .into_iter()
                    .filter(|l| l.master == Some(br.index))
                    .map(|l| l.name)
                    .filter(|n| !self.record.attached.iter().any(|p| p.name == *n))
                    .collect();
                if !others.is_empty() {
                    // The others keep the network; this process is no longer an owner.
                    if let Some(owner) = self.owner.take() {
                        let _ = owner.remove();
                    }
                    return Err(ModeError::BridgeBusy {
                        bridge,
                        ports: others,
                    });
                }
            }
        }
        let mut first_error = None;
        let mut keep = |result: Result<(), ModeError>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        for port in self.record.attached.clone() {
            keep(self.detach_with(&mut rtnl, &port.name));
        }
        if let Some(table) = self.record.nft_table.clone() {
            let deleted = nft::delete_table(&table);
            if deleted.is_ok() {
                self.record.nft_table = None;
            }
            keep(deleted.map_err(ModeError::from));
        }
        // Forwarding is restored only once the table is gone: the table's mark is what
        // says whether another NAT network still needs it.
        if self.record.nft_table.is_none() {
            keep(self.restore_uplink_forwarding(&mut rtnl));
        }
        if self.record.bridge_created {
            let deleted = match br.filter(|b| ours(b)) {
                Some(br) => match rtnl.del_link(br.index, &br.name) {
                    Err(NetlinkError::Request { source, .. })
                        if source.raw_os_error() == Some(libc::ENODEV) =>
                    {
                        Ok(())
                    }
                    other => other,
                },
                None => Ok(()),
            };
            if deleted.is_ok() {
                self.record.bridge_created = false;
            }
            keep(deleted.map_err(ModeError::from));
        }
        // This process leaves: its record goes once the bridge is gone (or left to others).
        if first_error.is_none() {
            if let Some(owner) = self.owner.take() {
                let path = owner.path().display().to_string();
                if let Err(source) = owner.remove() {
                    first_error = Some(ModeError::Owners { path, source });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Leaves the network, set up and attached, to its ports: this process
    /// stops being an owner (its record goes) without tearing anything down.
    /// For a setup that outlives its process (a persistent TAP on the
    /// bridge): a bridge with a port is never taken for a leftover.
    pub(crate) fn hand_over(&mut self) -> Result<(), ModeError> {
        match self.owner.take() {
            Some(owner) => {
                let path = owner.path().display().to_string();
                owner
                    .remove()
                    .map_err(|source| ModeError::Owners { path, source })
            }
            None => Ok(()),
        }
    }

    /// Turns forwarding on the NAT uplink back off if this network turned it on and no
    /// other vmkit NAT network on that uplink still needs it (the last one restores it).
    fn restore_uplink_forwarding(&mut self, rtnl: &mut Rtnl) -> Result<(), ModeError> {
        let NetworkMode::Nat(c) = &self.record.mode else {
            return Ok(());
        };
        if !self.record.uplink_forwarding_enabled {
            return Ok(());
        }
        let mut still_owed = false;
        for t in nft::vmkit_tables()? {
            still_owed |= nft::marks(&t)?.iter().any(|(u, _)| *u == c.uplink);
        }
        if !still_owed && rtnl.link(&c.uplink)?.is_some() {
            sysctl::set_forwarding(&c.uplink, false).map_err(sysctl_err(&c.uplink))?;
        }
        self.record.uplink_forwarding_enabled = false;
        Ok(())
    }
}
