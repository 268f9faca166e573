//! `Attachment`: TAPs joining and leaving networks for a VM's lifetime,
//! observed with `ip -j` in network namespaces the tests create.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use vmkit_net::{AttachError, Attachment, Departure, TapMode};

fn master(ns: &Netns, link: &str) -> Option<String> {
    ns.link(link)
        .and_then(|l| l["master"].as_str().map(str::to_string))
}

#[test]
fn the_last_vm_out_tears_the_isolated_network_down() {
    if !host_can("the_last_vm_out_tears_the_isolated_network_down", false) {
        return;
    }
    let ns = Netns::new("attach");
    ns.run(|| {
        let mode: TapMode = "isolated:vmkiso7".parse().unwrap();
        let (a, tap_a) = Attachment::open(&mode, "vmktapa%d").unwrap();
        let (b, tap_b) = Attachment::open(&mode, "vmktapb%d").unwrap();
        assert_eq!(a.tap_name(), tap_a.name());
        assert_eq!(a.bridge(), Some("vmkiso7"));
        assert_eq!(
            a.mode().map(ToString::to_string).as_deref(),
            Some("isolated:vmkiso7")
        );
        assert_eq!(master(&ns, tap_a.name()).as_deref(), Some("vmkiso7"));
        assert_eq!(master(&ns, tap_b.name()).as_deref(), Some("vmkiso7"));

        let (name_a, name_b) = (tap_a.name().to_string(), tap_b.name().to_string());
        drop(tap_a);
        let closed = a.close();
        assert!(closed.detach.is_ok(), "{closed:?}");
        assert_eq!(
            closed.network.unwrap(),
            Departure::LeftToOthers {
                bridge: "vmkiso7".into(),
                ports: vec![name_b.clone()]
            }
        );
        assert!(ns.link("vmkiso7").is_some(), "b still uses the bridge");
        assert!(ns.link(&name_a).is_none());

        drop(tap_b);
        let closed = b.close();
        assert!(closed.detach.is_ok(), "{closed:?}");
        assert_eq!(
            closed.network.unwrap(),
            Departure::TornDown {
                bridge: "vmkiso7".into()
            }
        );
        assert!(ns.link("vmkiso7").is_none(), "the bridge is gone");
        assert_eq!(ns.link_names(), ["lo"]);
    });
}

#[test]
fn a_bridged_vm_leaves_the_host_bridge_and_a_lone_tap_leaves_nothing() {
    if !host_can(
        "a_bridged_vm_leaves_the_host_bridge_and_a_lone_tap_leaves_nothing",
        false,
    ) {
        return;
    }
    let ns = Netns::new("attachbr");
    ns.ip(&["link", "add", "br-host", "type", "bridge"]);
    ns.run(|| {
        let (a, tap) = Attachment::open(&"bridged:br-host".parse().unwrap(), "vmktap%d").unwrap();
        assert_eq!(master(&ns, tap.name()).as_deref(), Some("br-host"));
        // Dropping the attachment closes it too (the TAP is still open
        // here: it is only taken off the bridge).
        let name = tap.name().to_string();
        drop(a);
        assert_eq!(master(&ns, &name), None);
        drop(tap);
        let (a, tap) = Attachment::open(&"bridged:br-host".parse().unwrap(), "vmktap%d").unwrap();
        drop(tap);
        let closed = a.close();
        assert_eq!(
            closed.network.unwrap(),
            Departure::Left {
                bridge: "br-host".into()
            }
        );
        assert!(ns.link("br-host").is_some(), "the host's bridge stays");

        let (a, tap) = Attachment::open(&TapMode::Alone, "vmklone%d").unwrap();
        assert_eq!((a.bridge(), a.mode()), (None, None));
        assert!(ns.link(tap.name()).is_some());
        let closed = a.close();
        assert!(closed.detach.is_ok());
        assert_eq!(closed.network.unwrap(), Departure::Alone);

        // A failure names what failed, and leaves nothing set up.
        let err = Attachment::open(&"bridged:nosuchbr".parse().unwrap(), "vmktap%d").unwrap_err();
        assert!(
            matches!(&err, AttachError::Setup { bridge, .. } if bridge == "nosuchbr"),
            "{err:?}"
        );
        let err = Attachment::open(&"isolated:vmkiso8".parse().unwrap(), "bad/name").unwrap_err();
        assert!(
            matches!(&err, AttachError::Tap { template, .. } if template == "bad/name"),
            "{err:?}"
        );
        assert!(
            ns.link("vmkiso8").is_none(),
            "the failed open undid its setup"
        );
    });
}
