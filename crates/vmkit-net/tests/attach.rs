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

/// Set in the child process of `a_network_left_by_a_killed_process_is_taken_over`: the
/// namespace to set the network up in.
const LEFTOVER_CHILD: &str = "VMKIT_NET_TEST_LEFTOVER_NS";

/// The child of `a_network_left_by_a_killed_process_is_taken_over` (run by it, not on its
/// own): sets up the network in the namespace it is given, says so, and waits to be killed.
#[test]
#[ignore = "run by a_network_left_by_a_killed_process_is_taken_over"]
fn leftover_child() {
    let Ok(ns) = std::env::var(LEFTOVER_CHILD) else {
        return;
    };
    enter(&ns);
    let mode: TapMode = "isolated:vmkiso8".parse().unwrap();
    let (attachment, tap) = Attachment::open(&mode, "vmktapk%d").unwrap();
    println!("ready {}", std::process::id());
    // Killed long before this; bounded so that a lost parent leaves no process behind.
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop((attachment, tap));
}

#[test]
fn a_network_left_by_a_killed_process_is_taken_over() {
    use std::io::BufRead;

    if !host_can("a_network_left_by_a_killed_process_is_taken_over", false) {
        return;
    }
    let ns = Netns::new("leftover");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "leftover_child", "--ignored", "--nocapture"])
        .env(LEFTOVER_CHILD, &ns.name)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // The child prints its line or ends (EOF) within its own 60 s bound.
    let ready = stdout
        .lines()
        .map(Result::unwrap)
        .find(|l| l.starts_with("ready "));
    child.kill().unwrap();
    child.wait().unwrap();
    let ready = ready.expect("the child set the network up");
    let pid: u32 = ready["ready ".len()..].parse().unwrap();
    assert_eq!(pid, child.id());
    // Killed: the bridge stays, its TAP went with the process.
    assert!(ns.link("vmkiso8").is_some());
    assert!(master(&ns, "vmktapk0").is_none());

    ns.run(|| {
        let mode: TapMode = "isolated:vmkiso8".parse().unwrap();
        let (a, tap_a) = Attachment::open(&mode, "vmktapa%d").unwrap();
        let leftover = a.leftover().expect("the leftover is reported").clone();
        assert_eq!(leftover.bridge, "vmkiso8");
        let pids: Vec<u32> = leftover.owners.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [pid]);
        assert!(leftover.to_string().contains(&format!("by process {pid},")));
        assert_eq!(master(&ns, tap_a.name()).as_deref(), Some("vmkiso8"));

        // The new owner runs: a second VM joins without a report.
        let (b, tap_b) = Attachment::open(&mode, "vmktapb%d").unwrap();
        assert_eq!(b.leftover(), None);
        drop(tap_b);
        assert!(matches!(
            b.close().network.unwrap(),
            Departure::LeftToOthers { .. }
        ));

        drop(tap_a);
        let closed = a.close();
        assert!(closed.detach.is_ok(), "{closed:?}");
        assert_eq!(
            closed.network.unwrap(),
            Departure::TornDown {
                bridge: "vmkiso8".into()
            }
        );
        assert!(ns.link("vmkiso8").is_none(), "the bridge is gone");
    });
}
