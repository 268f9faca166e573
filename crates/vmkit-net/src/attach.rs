//! A VM's TAP in its network, for the VM's lifetime: [`Attachment`].
//!
//! [`Attachment::open`] sets the [`TapMode`]'s network up (idempotently: a
//! second VM naming the same isolated or NAT bridge joins the first one's),
//! opens the TAP and attaches it. [`Attachment::close`] (or dropping the
//! attachment) takes the TAP off the bridge first and then tears the
//! network down, unless other ports are still on it: the last VM out
//! removes it. Detaching first means that two VMs leaving at the same
//! moment cannot each see the other's port and both leave the bridge
//! behind; at least one of them removes it.
//!
//! The TAP itself goes to the device (it is the virtio-net backend), so
//! the attachment only remembers its name; close it after the device has
//! stopped using the TAP (stop its [`NetWorker`](crate::NetWorker) first).
//!
//! ```no_run
//! use vmkit_net::{Attachment, Departure};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (attachment, tap) = Attachment::open(&"isolated:vmkiso0".parse()?, "vmktap%d")?;
//! // … the TAP is the VM's virtio-net backend while the VM runs …
//! # drop(tap);
//! let closed = attachment.close();
//! if let Ok(Departure::TornDown { bridge }) = &closed.network {
//!     println!("tore down {bridge}");
//! }
//! # Ok(())
//! # }
//! ```

use crate::mode::{ModeError, Network, NetworkMode};
use crate::owners::Leftover;
use crate::tap::{Tap, TapError};

/// Where a VM's TAP goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapMode {
    /// The TAP alone: the host configures it.
    Alone,
    /// The TAP joins a vmkit network.
    Network(NetworkMode),
}

/// The errors of [`Attachment`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The network could not be set up.
    #[error("cannot set up the network on {bridge}")]
    Setup {
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: ModeError,
    },
    /// The TAP could not be opened.
    #[error("cannot open the TAP {template:?}")]
    Tap {
        /// The name (or `%d` template) asked for.
        template: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// The TAP could not be attached to the bridge.
    #[error("cannot attach {tap} to {bridge}")]
    Attach {
        /// The TAP.
        tap: String,
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: ModeError,
    },
    /// The TAP could not be taken off the bridge.
    #[error("cannot detach {tap}")]
    Detach {
        /// The TAP.
        tap: String,
        /// Why.
        #[source]
        source: ModeError,
    },
    /// The network could not be torn down (what failed stays).
    #[error("cannot tear down {bridge}")]
    Teardown {
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: ModeError,
    },
}

/// What closing an [`Attachment`] did to the network.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Departure {
    /// A lone TAP: there was no network to leave.
    Alone,
    /// The TAP left a bridge vmkit did not create (bridged mode), which
    /// stays: detaching was all there was to undo.
    Left {
        /// The bridge.
        bridge: String,
    },
    /// The TAP was the last port: the network is gone.
    TornDown {
        /// The bridge.
        bridge: String,
    },
    /// Other ports are still on the bridge, which stays for them.
    LeftToOthers {
        /// The bridge.
        bridge: String,
        /// The ports still on it.
        ports: Vec<String>,
    },
}

/// What [`Attachment::close`] did: both steps are always tried.
#[derive(Debug)]
pub struct Closed {
    /// Taking the TAP off the bridge ([`AttachError::Detach`]).
    pub detach: Result<(), AttachError>,
    /// What became of the network ([`AttachError::Teardown`]).
    pub network: Result<Departure, AttachError>,
}

/// A VM's TAP and the network it joined; see the [module
/// documentation](self). Dropping it closes it, discarding the outcome.
#[derive(Debug)]
pub struct Attachment {
    network: Option<Network>,
    tap_name: String,
}

impl Attachment {
    /// Sets up `mode`'s network, opens the TAP `tap_template` (a name, or a
    /// pattern whose `%d` the kernel fills in) and attaches it. Returns the
    /// attachment and the TAP, for the device. On failure, whatever this
    /// call set up is undone.
    pub fn open(mode: &TapMode, tap_template: &str) -> Result<(Attachment, Tap), AttachError> {
        let network = match mode {
            TapMode::Alone => None,
            TapMode::Network(mode) => {
                Some(
                    Network::setup(mode.clone()).map_err(|source| AttachError::Setup {
                        bridge: mode.bridge().to_string(),
                        source,
                    })?,
                )
            }
        };
        // From here on, a failure drops `attachment`, which undoes the setup.
        let mut attachment = Attachment {
            network,
            tap_name: String::new(),
        };
        let tap = Tap::open(tap_template).map_err(|source| AttachError::Tap {
            template: tap_template.to_string(),
            source,
        })?;
        attachment.tap_name = tap.name().to_string();
        if let Some(network) = attachment.network.as_mut() {
            network
                .attach(tap.name())
                .map_err(|source| AttachError::Attach {
                    tap: tap.name().to_string(),
                    bridge: network.bridge().to_string(),
                    source,
                })?;
        }
        Ok((attachment, tap))
    }

    /// The network's mode, or `None` for a lone TAP.
    pub fn mode(&self) -> Option<&NetworkMode> {
        self.network.as_ref().map(Network::mode)
    }

    /// The bridge, or `None` for a lone TAP.
    pub fn bridge(&self) -> Option<&str> {
        self.network.as_ref().map(Network::bridge)
    }

    /// Whether the network was found left behind by processes that no longer exist and
    /// taken over ([`Network::leftover`]); a VMM tells its user.
    pub fn leftover(&self) -> Option<&Leftover> {
        self.network.as_ref().and_then(Network::leftover)
    }

    /// The TAP's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// Takes the TAP off the bridge and tears the network down unless
    /// other ports are still on it.
    pub fn close(mut self) -> Closed {
        self.leave()
    }

    fn leave(&mut self) -> Closed {
        let Some(mut network) = self.network.take() else {
            return Closed {
                detach: Ok(()),
                network: Ok(Departure::Alone),
            };
        };
        let bridge = network.bridge().to_string();
        let detach = network
            .detach(&self.tap_name)
            .map_err(|source| AttachError::Detach {
                tap: self.tap_name.clone(),
                source,
            });
        let bridged = matches!(network.mode(), NetworkMode::Bridged { .. });
        let network = match network.teardown() {
            Ok(()) if bridged => Ok(Departure::Left { bridge }),
            Ok(()) => Ok(Departure::TornDown { bridge }),
            Err(ModeError::BridgeBusy { ports, .. }) => {
                Ok(Departure::LeftToOthers { bridge, ports })
            }
            Err(source) => Err(AttachError::Teardown { bridge, source }),
        };
        Closed { detach, network }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}
