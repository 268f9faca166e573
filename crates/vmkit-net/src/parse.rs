//! Text forms of network settings, as a VMM's command line takes them:
//! [`NetworkMode`] and [`TapMode`] implement [`FromStr`] and [`Display`],
//! [`parse_mac`] reads a MAC address.
//!
//! | text | value |
//! | --- | --- |
//! | `tap` | [`TapMode::Alone`] (a [`TapMode`] only) |
//! | `isolated:BRIDGE` | [`NetworkMode::Isolated`] |
//! | `bridged:BRIDGE` | [`NetworkMode::Bridged`] |
//! | `nat:BRIDGE:GATEWAY/PREFIX:UPLINK` | [`NetworkMode::Nat`] |
//!
//! Parsing checks the syntax only; names and the subnet are checked by
//! [`Network::setup`](crate::Network::setup), with errors of their own.
//!
//! ```
//! use vmkit_net::{NetworkMode, TapMode};
//!
//! let mode: TapMode = "nat:vmknat0:10.0.2.1/24:eth0".parse()?;
//! let TapMode::Network(NetworkMode::Nat(nat)) = &mode else { unreachable!() };
//! assert_eq!((nat.bridge.as_str(), nat.prefix_len), ("vmknat0", 24));
//! assert_eq!(mode.to_string(), "nat:vmknat0:10.0.2.1/24:eth0");
//! assert_eq!(vmkit_net::parse_mac("52:54:00:12:34:56")?, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
//! # Ok::<(), vmkit_net::ParseError>(())
//! ```

use std::fmt::{self, Display};
use std::net::Ipv4Addr;
use std::str::FromStr;

use vmkit_virtio::net::MacAddr;

use crate::attach::TapMode;
use crate::mode::{NatConfig, NetworkMode};

/// The forms a [`NetworkMode`] is written in.
const NETWORK_FORMS: &str = "isolated:BRIDGE, bridged:BRIDGE or nat:BRIDGE:GATEWAY/PREFIX:UPLINK";
/// The forms a [`TapMode`] is written in.
const TAP_FORMS: &str = "tap, isolated:BRIDGE, bridged:BRIDGE or nat:BRIDGE:GATEWAY/PREFIX:UPLINK";

/// Text that is not a network mode or a MAC address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not a network mode.
    #[error("{text:?} is not a network mode: the forms are {forms}")]
    Mode {
        /// The text.
        text: String,
        /// The forms accepted.
        forms: &'static str,
    },
    /// Not a MAC address.
    #[error("{text:?} is not a MAC address: six pairs of hex digits like 52:54:00:12:34:56")]
    Mac {
        /// The text.
        text: String,
    },
}

fn parse_network(text: &str, forms: &'static str) -> Result<NetworkMode, ParseError> {
    let bad = || ParseError::Mode {
        text: text.to_string(),
        forms,
    };
    let parts: Vec<&str> = text.split(':').collect();
    Ok(match parts.as_slice() {
        ["isolated", bridge] => NetworkMode::Isolated {
            bridge: bridge.to_string(),
        },
        ["bridged", bridge] => NetworkMode::Bridged {
            bridge: bridge.to_string(),
        },
        ["nat", bridge, subnet, uplink] => {
            let (gateway, prefix) = subnet.split_once('/').ok_or_else(bad)?;
            NetworkMode::Nat(NatConfig {
                bridge: bridge.to_string(),
                gateway: gateway.parse::<Ipv4Addr>().map_err(|_| bad())?,
                prefix_len: prefix.parse().map_err(|_| bad())?,
                uplink: uplink.to_string(),
            })
        }
        _ => return Err(bad()),
    })
}

impl FromStr for NetworkMode {
    type Err = ParseError;

    /// Parses `isolated:BRIDGE`, `bridged:BRIDGE` or
    /// `nat:BRIDGE:GATEWAY/PREFIX:UPLINK`.
    fn from_str(text: &str) -> Result<NetworkMode, ParseError> {
        parse_network(text, NETWORK_FORMS)
    }
}

impl Display for NetworkMode {
    /// Writes the form [`NetworkMode::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::Isolated { bridge } => write!(f, "isolated:{bridge}"),
            NetworkMode::Bridged { bridge } => write!(f, "bridged:{bridge}"),
            NetworkMode::Nat(c) => write!(
                f,
                "nat:{}:{}/{}:{}",
                c.bridge, c.gateway, c.prefix_len, c.uplink
            ),
        }
    }
}

impl FromStr for TapMode {
    type Err = ParseError;

    /// Parses `tap` or a [`NetworkMode`].
    fn from_str(text: &str) -> Result<TapMode, ParseError> {
        if text == "tap" {
            return Ok(TapMode::Alone);
        }
        parse_network(text, TAP_FORMS).map(TapMode::Network)
    }
}

impl Display for TapMode {
    /// Writes the form [`TapMode::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TapMode::Alone => f.write_str("tap"),
            TapMode::Network(mode) => mode.fmt(f),
        }
    }
}

/// Parses a MAC address written as six pairs of hex digits separated by
/// colons (`52:54:00:12:34:56`, either case); the inverse of
/// [`fmt_mac`](vmkit_virtio::net::fmt_mac).
pub fn parse_mac(text: &str) -> Result<MacAddr, ParseError> {
    let bad = || ParseError::Mac {
        text: text.to_string(),
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vmkit_virtio::net::fmt_mac;

    #[test]
    fn modes_parse() {
        assert_eq!("tap".parse(), Ok(TapMode::Alone));
        assert_eq!(
            "isolated:br0".parse(),
            Ok(TapMode::Network(NetworkMode::Isolated {
                bridge: "br0".into()
            }))
        );
        assert_eq!(
            "bridged:lanbr0".parse(),
            Ok(NetworkMode::Bridged {
                bridge: "lanbr0".into()
            })
        );
        let Ok(TapMode::Network(NetworkMode::Nat(c))) = "nat:vmknat0:10.0.2.1/24:eth0".parse()
        else {
            panic!("nat did not parse");
        };
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(
            (c.bridge.as_str(), c.prefix_len, c.uplink.as_str()),
            ("vmknat0", 24, "eth0")
        );
        for bad in [
            "",
            "bridge:br0",
            "nat:br:10.0.2.1:eth0",
            "nat:br:x/24:eth0",
            "nat:br:10.0.2.1/x:eth0",
            "isolated",
            "isolated:br0:x",
            "tap:x",
        ] {
            let err = bad.parse::<TapMode>().unwrap_err();
            assert_eq!(
                err,
                ParseError::Mode {
                    text: bad.into(),
                    forms: TAP_FORMS
                }
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        // "tap" is a TapMode, not a NetworkMode.
        assert!(matches!(
            "tap".parse::<NetworkMode>(),
            Err(ParseError::Mode {
                forms: NETWORK_FORMS,
                ..
            })
        ));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:0f"),
            Ok([0x52, 0x54, 0, 0xab, 0xcd, 0x0f])
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
            "+5:54:00:ab:cd:0f",
            "52-54-00-ab-cd-0f",
        ] {
            let err = parse_mac(bad).unwrap_err();
            assert_eq!(err, ParseError::Mac { text: bad.into() });
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_.-]{1,15}"
    }

    fn network_mode() -> impl Strategy<Value = NetworkMode> {
        prop_oneof![
            name().prop_map(|bridge| NetworkMode::Isolated { bridge }),
            name().prop_map(|bridge| NetworkMode::Bridged { bridge }),
            (name(), any::<u32>(), any::<u8>(), name()).prop_map(|(bridge, gw, prefix, uplink)| {
                NetworkMode::Nat(NatConfig {
                    bridge,
                    gateway: Ipv4Addr::from(gw),
                    prefix_len: prefix,
                    uplink,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn modes_round_trip(mode in network_mode(), alone in any::<bool>()) {
            let mode = if alone { TapMode::Alone } else { TapMode::Network(mode) };
            prop_assert_eq!(mode.to_string().parse::<TapMode>(), Ok(mode));
        }

        #[test]
        fn macs_round_trip(mac in any::<[u8; 6]>()) {
            prop_assert_eq!(parse_mac(&fmt_mac(&mac)), Ok(mac));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = text.parse::<TapMode>();
            let _ = parse_mac(&text);
        }
    }
}
