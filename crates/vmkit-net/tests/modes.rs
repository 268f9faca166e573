//! The network modes, each in network namespaces the test creates: the
//! library sets a mode up in a "host" namespace, `ip -j` and `nft` check
//! the result as independent observers, traffic goes between the VM's TAP
//! (the test plays the guest on its file descriptor) and other namespaces,
//! and teardown must leave the host exactly as it was.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use vmkit_net::{ModeError, NatConfig, Network, NetworkMode, NetworkRecord, Tap, TapOptions};
use vmkit_virtio::net::NetBackend;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TAP without the virtio-net header: the test reads and writes raw
/// Ethernet frames on it, as the guest would see them.
fn plain_tap(name: &str) -> Tap {
    Tap::open_with(&TapOptions {
        name: name.into(),
        vnet_hdr: false,
    })
    .unwrap()
}

/// Reads frames from `tap` until `want` accepts one, answering ARP
/// requests for `guest` on the way.
fn tap_receive<T>(
    tap: &mut Tap,
    guest: &Guest,
    timeout: Duration,
    mut want: impl FnMut(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut buf = vec![0u8; 65536];
    wait_for(timeout, || loop {
        let n = match tap.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => panic!("tap read: {e}"),
        };
        let f = &buf[..n];
        if let Some(reply) = guest.arp_reply(f) {
            tap.send(&reply).unwrap();
            continue;
        }
        if let Some(v) = want(f) {
            return Some(v);
        }
    })
}

/// The MAC address in `f` if it is an ARP reply for `ip`.
fn arp_reply_from(f: &[u8], ip: Ipv4Addr) -> Option<[u8; 6]> {
    let a = f.get(14..42)?;
    let is_reply = f[12..14] == [0x08, 0x06] && a[6..8] == [0, 2] && a[14..18] == ip.octets();
    is_reply.then(|| {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&a[8..14]);
        mac
    })
}

/// A UDP datagram for `guest` on `port`: (source address, source port, data).
fn udp_to(f: &[u8], guest: &Guest, port: u16) -> Option<(Ipv4Addr, u16, Vec<u8>)> {
    let ip = parse_ipv4(f)?;
    let u = ip.payload;
    if ip.proto != 17 || ip.dst != guest.ip || u16::from_be_bytes([u[2], u[3]]) != port {
        return None;
    }
    Some((ip.src, u16::from_be_bytes([u[0], u[1]]), u[8..].to_vec()))
}

/// Runs a UDP peer in `ns`: binds `addr`, receives one datagram, answers
/// `reply` to its sender, and returns (sender, data). `ready` fires once
/// it listens.
fn udp_peer(
    ns: &Netns,
    addr: SocketAddr,
    reply: &[u8],
    ready: mpsc::Sender<()>,
) -> (SocketAddr, Vec<u8>) {
    ns.run(|| {
        let s = UdpSocket::bind(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).expect("datagram reaches the peer");
        s.send_to(reply, from).unwrap();
        (from, buf[..n].to_vec())
    })
}

fn sysctl_forwarding(ns: &Netns, dev: &str) -> String {
    ns.sysctl(&format!("net/ipv4/conf/{dev}/forwarding"))
}

#[test]
fn isolated_bridge_joins_its_vms_and_leaves_nothing_behind() {
    if !host_can(
        "isolated_bridge_joins_its_vms_and_leaves_nothing_behind",
        true,
    ) {
        return;
    }
    let ns = Netns::new("iso");
    ns.run(|| {
        let mut a = plain_tap("vmkta");
        let mut b = plain_tap("vmktb");
        let (links0, addrs0, nft0) = (ns.links_summary(), ns.all_addrs(), ns.nft_text());
        let mode = NetworkMode::Isolated {
            bridge: "vmkiso0".into(),
        };
        let mut net = Network::setup(mode.clone()).unwrap();
        net.attach("vmkta").unwrap();
        net.attach("vmktb").unwrap();
        net.attach("vmkta").unwrap(); // idempotent
        assert_eq!(net.record().attached_names(), ["vmkta", "vmktb"]);
        assert!(net
            .record()
            .attached
            .iter()
            .all(|p| p.brought_up && p.ipv6_disabled));

        let br = ns.link("vmkiso0").expect("bridge exists");
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert_eq!(br["ifalias"], "vmkit-net isolated");
        assert!(br["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        let addrs = ns.ip_json(&["addr", "show", "dev", "vmkiso0"]);
        assert_eq!(
            addrs[0]["addr_info"],
            serde_json::json!([]),
            "no host address, not even IPv6 link-local"
        );
        for t in ["vmkta", "vmktb"] {
            assert_eq!(ns.link(t).unwrap()["master"], "vmkiso0");
        }
        assert_eq!(ns.nft_text(), nft0, "no firewall rules");

        // VM a to VM b, through the bridge.
        let ga = Guest {
            mac: [0x52, 0x54, 0, 0, 0, 0xa],
            ip: Ipv4Addr::new(10, 55, 0, 10),
        };
        let gb = Guest {
            mac: [0x52, 0x54, 0, 0, 0, 0xb],
            ip: Ipv4Addr::new(10, 55, 0, 11),
        };
        let f = ga.udp_frame(gb.mac, 1000, gb.ip, 2000, b"a to b");
        a.send(&f).unwrap();
        let got = tap_receive(&mut b, &gb, TIMEOUT, |f| udp_to(f, &gb, 2000)).expect("b receives");
        assert_eq!(got, (ga.ip, 1000, b"a to b".to_vec()));

        // The host's stack stays out: it has an address on another interface,
        // and a VM that asks for it gets no ARP reply, and a datagram sent to
        // it through the bridge's own MAC never reaches a socket there.
        ns.ip(&[
            "link", "add", "vmkhost0", "type", "veth", "peer", "name", "vmkhost1",
        ]);
        ns.ip(&["addr", "add", "10.66.0.1/24", "dev", "vmkhost0"]);
        ns.ip(&["link", "set", "vmkhost0", "up"]);
        let host_ip = Ipv4Addr::new(10, 66, 0, 1);
        let sock = UdpSocket::bind((host_ip, 4000)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        a.send(&ga.arp_request(host_ip)).unwrap();
        let arp_answer = tap_receive(&mut a, &ga, Duration::from_millis(500), |f| {
            arp_reply_from(f, host_ip)
        });
        assert_eq!(arp_answer, None, "the host answered ARP for {host_ip}");
        let br_mac = ns.mac("vmkiso0");
        a.send(&ga.udp_frame(br_mac, 1000, host_ip, 4000, b"to the host"))
            .unwrap();
        let mut buf = [0u8; 64];
        let reached = sock.recv_from(&mut buf);
        assert!(reached.is_err(), "the host received {reached:?}");
        drop(sock);
        ns.ip(&["link", "del", "vmkhost0"]);

        // Idempotent setup: the same mode again changes nothing.
        let links1 = ns.links_summary();
        let mut again = Network::setup(mode.clone()).unwrap();
        assert!(again.record().bridge_created);
        assert_eq!(ns.links_summary(), links1);
        // That second handle did not attach the VMs: it refuses to delete
        // the bridge under them, and changes nothing.
        match again.teardown() {
            Err(ModeError::BridgeBusy { bridge, mut ports }) => {
                ports.sort();
                assert_eq!(
                    (bridge.as_str(), ports),
                    ("vmkiso0", vec!["vmkta".to_string(), "vmktb".to_string()])
                );
            }
            other => panic!("expected BridgeBusy, got {other:?}"),
        }
        assert_eq!(ns.links_summary(), links1);

        net.teardown().unwrap();
        assert!(ns.link("vmkiso0").is_none());
        assert_eq!(ns.links_summary(), links0, "TAPs are back as they were");
        assert_eq!(ns.all_addrs(), addrs0);
        assert_eq!(ns.nft_text(), nft0);
        net.teardown().unwrap(); // idempotent
        again.teardown().unwrap();
        assert_eq!(ns.links_summary(), links0);
        drop((a, b));
    });
}

/// Two VMs starting at once set up the same isolated network: one creates
/// the bridge, the other finds it (created a moment ago, maybe not yet
/// labelled as vmkit's) and joins it; neither fails.
#[test]
fn concurrent_setups_of_one_network_both_succeed() {
    if !host_can("concurrent_setups_of_one_network_both_succeed", false) {
        return;
    }
    let ns = Netns::new("race");
    let links0 = ns.links_summary();
    let mode = NetworkMode::Isolated {
        bridge: "vmkrace0".into(),
    };
    for round in 0..20 {
        let barrier = std::sync::Barrier::new(4);
        let results: Vec<Result<Network, ModeError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        enter(&ns.name);
                        barrier.wait();
                        Network::setup(mode.clone())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let errors: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        let nets: Vec<Network> = results.into_iter().flatten().collect();
        assert!(nets.iter().all(|n| n.record().bridge_created));
        ns.run(|| {
            for mut n in nets {
                n.teardown().unwrap();
            }
        });
        assert_eq!(ns.links_summary(), links0, "round {round}");
    }
}

#[test]
fn a_foreign_link_with_the_bridge_name_is_never_taken_or_deleted() {
    if !host_can(
        "a_foreign_link_with_the_bridge_name_is_never_taken_or_deleted",
        true,
    ) {
        return;
    }
    let ns = Netns::new("foreign");
    ns.ip(&["link", "add", "vmkiso1", "type", "bridge"]);
    ns.ip(&[
        "link",
        "add",
        "vmkdummy",
        "type",
        "veth",
        "peer",
        "name",
        "vmkdummy1",
    ]);
    let links0 = ns.links_summary();
    ns.run(|| {
        for name in ["vmkiso1", "vmkdummy"] {
            let e = Network::setup(NetworkMode::Isolated {
                bridge: name.into(),
            })
            .unwrap_err();
            assert!(matches!(e, ModeError::BridgeInUse { .. }), "{name}: {e}");
        }
        // A record that claims the foreign bridge (corrupt, or from a
        // vmkit whose bridge was replaced): teardown still leaves it alone.
        let mut forged = Network::from_record(NetworkRecord {
            mode: NetworkMode::Isolated {
                bridge: "vmkiso1".into(),
            },
            bridge_created: true,
            nft_table: None,
            uplink_forwarding_enabled: false,
            attached: vec![],
        });
        forged.teardown().unwrap();
        // Bridged mode on something that is not a bridge, or not there.
        let e = Network::setup(NetworkMode::Bridged {
            bridge: "vmkdummy".into(),
        })
        .unwrap_err();
        assert!(matches!(e, ModeError::NotABridge { .. }), "{e}");
        let e = Network::setup(NetworkMode::Bridged {
            bridge: "nosuchbr".into(),
        })
        .unwrap_err();
        assert!(matches!(e, ModeError::NoSuchLink { .. }), "{e}");
    });
    assert_eq!(ns.links_summary(), links0);
}

#[test]
fn invalid_configurations_are_refused_before_anything_is_created() {
    if !host_can(
        "invalid_configurations_are_refused_before_anything_is_created",
        true,
    ) {
        return;
    }
    let ns = Netns::new("invalid");
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    let (links0, nft0) = (ns.links_summary(), ns.nft_text());
    ns.run(|| {
        let nat = |bridge: &str, gw: [u8; 4], len: u8, uplink: &str| {
            Network::setup(NetworkMode::Nat(NatConfig {
                bridge: bridge.into(),
                gateway: Ipv4Addr::from(gw),
                prefix_len: len,
                uplink: uplink.into(),
            }))
        };
        let cases: Vec<(&str, Result<Network, ModeError>)> = vec![
            ("prefix 31", nat("vmkn", [10, 0, 0, 1], 31, "up0")),
            ("prefix 7", nat("vmkn", [10, 0, 0, 1], 7, "up0")),
            ("network address", nat("vmkn", [10, 0, 0, 0], 24, "up0")),
            ("broadcast address", nat("vmkn", [10, 0, 0, 255], 24, "up0")),
            ("loopback", nat("vmkn", [127, 0, 0, 1], 8, "up0")),
            ("uplink is the bridge", nat("up0", [10, 0, 0, 1], 24, "up0")),
            ("bad bridge name", nat("a/b", [10, 0, 0, 1], 24, "up0")),
            (
                "long bridge name",
                nat("sixteen-chars-xx", [10, 0, 0, 1], 24, "up0"),
            ),
            ("bad uplink name", nat("vmkn", [10, 0, 0, 1], 24, "up 0")),
            ("missing uplink", nat("vmkn", [10, 0, 0, 1], 24, "nosuch")),
        ];
        for (what, r) in cases {
            let e = r.expect_err(what);
            let _ = e.to_string();
        }
    });
    assert_eq!(ns.links_summary(), links0);
    assert_eq!(ns.nft_text(), nft0);
}

#[test]
fn bridged_mode_puts_the_vm_on_the_host_lan_and_keeps_the_bridge() {
    if !host_can(
        "bridged_mode_puts_the_vm_on_the_host_lan_and_keeps_the_bridge",
        true,
    ) {
        return;
    }
    let host = Netns::new("brhost");
    let lan = Netns::new("lan");
    host.ip(&["link", "add", "br-lan", "type", "bridge"]);
    host.ip(&["addr", "add", "10.77.0.1/24", "dev", "br-lan"]);
    host.ip(&["link", "set", "br-lan", "up"]);
    host.ip(&[
        "link", "add", "lanport", "type", "veth", "peer", "name", "eth0", "netns", &lan.name,
    ]);
    host.ip(&["link", "set", "lanport", "master", "br-lan", "up"]);
    lan.ip(&["addr", "add", "10.77.0.50/24", "dev", "eth0"]);
    lan.ip(&["link", "set", "eth0", "up"]);
    let peer_mac = lan.mac("eth0");
    let guest = Guest {
        mac: [0x52, 0x54, 0, 0, 0x77, 0x20],
        ip: Ipv4Addr::new(10, 77, 0, 20),
    };

    host.run(|| {
        let mut tap = plain_tap("vmkbt0");
        let (links0, addrs0, nft0) = (host.links_summary(), host.all_addrs(), host.nft_text());
        let mode = NetworkMode::Bridged {
            bridge: "br-lan".into(),
        };
        let mut net = Network::setup(mode.clone()).unwrap();
        assert!(!net.record().bridge_created);
        net.attach("vmkbt0").unwrap();
        assert_eq!(host.link("vmkbt0").unwrap()["master"], "br-lan");
        assert_eq!(host.all_addrs(), addrs0, "no address changed");
        assert_eq!(host.nft_text(), nft0);

        // The VM talks to a machine on the LAN, and hears back (the LAN
        // machine resolves the VM by ARP across the bridge).
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let peer =
                s.spawn(|| udp_peer(&lan, "10.77.0.50:6000".parse().unwrap(), b"hello VM", tx));
            rx.recv().unwrap();
            tap.send(&guest.udp_frame(
                peer_mac,
                5000,
                Ipv4Addr::new(10, 77, 0, 50),
                6000,
                b"hello LAN",
            ))
            .unwrap();
            let reply = tap_receive(&mut tap, &guest, TIMEOUT, |f| udp_to(f, &guest, 5000));
            let (from, data) = peer.join().unwrap();
            assert_eq!(from, "10.77.0.20:5000".parse().unwrap());
            assert_eq!(data, b"hello LAN");
            assert_eq!(
                reply,
                Some((Ipv4Addr::new(10, 77, 0, 50), 6000, b"hello VM".to_vec()))
            );
        });

        Network::setup(mode).unwrap(); // idempotent, creates nothing
        net.teardown().unwrap();
        net.teardown().unwrap();
        // The bridge, its address and its other port are all still there.
        assert_eq!(host.links_summary(), links0);
        assert_eq!(host.all_addrs(), addrs0);
        assert_eq!(host.link("lanport").unwrap()["master"], "br-lan");
        assert_eq!(host.addrs("br-lan"), ["10.77.0.1/24"]);
    });
}

/// A host namespace with an uplink `up0` (198.51.100.1/24) to an
/// "outside" namespace (198.51.100.2/24), and a table of the host's own
/// that vmkit must not touch.
fn nat_hosts() -> (Netns, Netns) {
    let host = Netns::new("nathost");
    let out = Netns::new("outside");
    host.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &out.name,
    ]);
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", "up0"]);
    host.ip(&["link", "set", "up0", "up"]);
    out.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    out.ip(&["link", "set", "eth0", "up"]);
    host.exec(&["nft", "add table inet hostfw; add chain inet hostfw input { type filter hook input priority 0; policy accept; }; add rule inet hostfw input counter"]);
    (host, out)
}

fn nat_config(bridge: &str, third: u8) -> NatConfig {
    NatConfig {
        bridge: bridge.into(),
        gateway: Ipv4Addr::new(10, 200, third, 1),
        prefix_len: 24,
        uplink: "up0".into(),
    }
}

#[test]
fn nat_mode_masquerades_the_subnet_and_tears_down_exactly() {
    if !host_can(
        "nat_mode_masquerades_the_subnet_and_tears_down_exactly",
        true,
    ) {
        return;
    }
    let (host, out) = nat_hosts();
    let guest = Guest {
        mac: [0x52, 0x54, 0, 0, 0xc8, 2],
        ip: Ipv4Addr::new(10, 200, 0, 2),
    };
    host.run(|| {
        let mut tap = plain_tap("vmknt0");
        let (links0, addrs0, nft0) = (host.links_summary(), host.all_addrs(), host.nft_text());
        assert_eq!(sysctl_forwarding(&host, "up0"), "0");
        let mode = NetworkMode::Nat(nat_config("vmknat0", 0));
        let mut net = Network::setup(mode.clone()).unwrap();
        net.attach("vmknt0").unwrap();

        // What an observer sees.
        let br = host.link("vmknat0").unwrap();
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert_eq!(br["ifalias"], "vmkit-net nat");
        assert_eq!(host.addrs("vmknat0"), ["10.200.0.1/24"]);
        assert_eq!(host.link("vmknt0").unwrap()["master"], "vmknat0");
        assert_eq!(sysctl_forwarding(&host, "up0"), "1");
        assert_eq!(sysctl_forwarding(&host, "vmknat0"), "1");
        assert_eq!(
            host.sysctl("net/ipv4/ip_forward"),
            "0",
            "global forwarding untouched"
        );
        let rules = host.nft_json();
        let objs = rules["nftables"].as_array().unwrap();
        let table = objs
            .iter()
            .find(|o| o["table"]["name"] == "vmkit_nat_vmknat0")
            .expect("NAT table");
        assert_eq!(table["table"]["family"], "ip");
        let chain = |name: &str| {
            objs.iter()
                .find(|o| o["chain"]["table"] == "vmkit_nat_vmknat0" && o["chain"]["name"] == name)
                .cloned()
        };
        assert_eq!(
            chain("postrouting").unwrap()["chain"]["hook"],
            "postrouting"
        );
        assert_eq!(chain("postrouting").unwrap()["chain"]["type"], "nat");
        assert_eq!(chain("forward").unwrap()["chain"]["hook"], "forward");
        let rules_in = |c: &str| {
            objs.iter()
                .filter(|o| o["rule"]["table"] == "vmkit_nat_vmknat0" && o["rule"]["chain"] == c)
                .count()
        };
        assert_eq!(rules_in("postrouting"), 1);
        assert_eq!(rules_in("forward"), 4);
        let text = host.nft_text();
        assert!(
            text.contains(
                "ip saddr 10.200.0.0/24 ip daddr != 10.200.0.0/24 oifname \"up0\" masquerade"
            ),
            "{text}"
        );
        assert!(
            text.contains("vmkit-net uplink=up0 forwarding-was=0"),
            "{text}"
        );
        assert!(
            text.contains("table inet hostfw"),
            "the host's table is kept"
        );

        // Idempotent: setting up again gives the same rules and addresses.
        let (links1, addrs1) = (host.links_summary(), host.all_addrs());
        let mut again = Network::setup(mode.clone()).unwrap();
        assert_eq!(host.nft_text(), text);
        assert_eq!(host.links_summary(), links1);
        assert_eq!(host.all_addrs(), addrs1);
        assert!(
            again.record().uplink_forwarding_enabled,
            "the obligation is inherited from the mark"
        );

        // The VM reaches the outside, which sees the host's address.
        let gw_mac = host.mac("vmknat0");
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let peer = s.spawn(|| {
                udp_peer(
                    &out,
                    "198.51.100.2:7000".parse().unwrap(),
                    b"from outside",
                    tx,
                )
            });
            rx.recv().unwrap();
            tap.send(&guest.udp_frame(
                gw_mac,
                5555,
                Ipv4Addr::new(198, 51, 100, 2),
                7000,
                b"from the VM",
            ))
            .unwrap();
            let reply = tap_receive(&mut tap, &guest, TIMEOUT, |f| udp_to(f, &guest, 5555));
            let (from, data) = peer.join().unwrap();
            assert_eq!(data, b"from the VM");
            assert_eq!(
                from.ip(),
                Ipv4Addr::new(198, 51, 100, 1),
                "masqueraded to the uplink address"
            );
            assert_eq!(
                reply,
                Some((
                    Ipv4Addr::new(198, 51, 100, 2),
                    7000,
                    b"from outside".to_vec()
                ))
            );
        });

        // The outside cannot open a connection into the subnet, even with
        // a route to it: only replies are forwarded in.
        out.ip(&["route", "add", "10.200.0.0/24", "via", "198.51.100.1"]);
        out.run(|| {
            let s = UdpSocket::bind("198.51.100.2:0").unwrap();
            s.send_to(b"unsolicited", "10.200.0.2:5556").unwrap();
        });
        let leaked = tap_receive(&mut tap, &guest, Duration::from_millis(500), |f| {
            udp_to(f, &guest, 5556)
        });
        assert_eq!(
            leaked, None,
            "unsolicited traffic was forwarded into the subnet"
        );

        net.teardown().unwrap();
        assert!(host.link("vmknat0").is_none());
        assert_eq!(host.links_summary(), links0);
        assert_eq!(host.all_addrs(), addrs0);
        assert_eq!(host.nft_text(), nft0, "only vmkit's table is gone");
        assert_eq!(sysctl_forwarding(&host, "up0"), "0", "forwarding restored");
        net.teardown().unwrap();
        again.teardown().unwrap();
        assert_eq!(host.links_summary(), links0);
        assert_eq!(host.nft_text(), nft0);
        assert_eq!(sysctl_forwarding(&host, "up0"), "0");
    });
}

#[test]
fn uplink_forwarding_is_restored_by_the_last_nat_network_only_if_vmkit_enabled_it() {
    if !host_can(
        "uplink_forwarding_is_restored_by_the_last_nat_network_only_if_vmkit_enabled_it",
        true,
    ) {
        return;
    }
    let (host, _out) = nat_hosts();
    host.run(|| {
        let nft0 = host.nft_text();
        let mut one = Network::setup(NetworkMode::Nat(nat_config("vmknat1", 1))).unwrap();
        let mut two = Network::setup(NetworkMode::Nat(nat_config("vmknat2", 2))).unwrap();
        assert!(one.record().uplink_forwarding_enabled);
        assert!(two.record().uplink_forwarding_enabled);
        assert_eq!(sysctl_forwarding(&host, "up0"), "1");
        one.teardown().unwrap();
        assert_eq!(
            sysctl_forwarding(&host, "up0"),
            "1",
            "network two still needs it"
        );
        assert!(host.link("vmknat2").is_some());
        two.teardown().unwrap();
        assert_eq!(
            sysctl_forwarding(&host, "up0"),
            "0",
            "the last one restores it"
        );
        assert_eq!(host.nft_text(), nft0);

        // Forwarding that was already on stays on.
        host.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/up0/forwarding",
        ]);
        let mut three = Network::setup(NetworkMode::Nat(nat_config("vmknat3", 3))).unwrap();
        assert!(!three.record().uplink_forwarding_enabled);
        three.teardown().unwrap();
        assert_eq!(sysctl_forwarding(&host, "up0"), "1");
        assert_eq!(host.nft_text(), nft0);
    });
}

#[test]
fn a_saved_record_tears_down_after_a_restart() {
    if !host_can("a_saved_record_tears_down_after_a_restart", true) {
        return;
    }
    let (host, _out) = nat_hosts();
    host.run(|| {
        let _tap = plain_tap("vmknt9");
        let (links0, addrs0, nft0) = (host.links_summary(), host.all_addrs(), host.nft_text());
        let mut net = Network::setup(NetworkMode::Nat(nat_config("vmknat9", 9))).unwrap();
        net.attach("vmknt9").unwrap();
        let saved = serde_json::to_string(net.record()).unwrap();
        drop(net); // the VMM "restarts" without tearing down
        assert!(host.link("vmknat9").is_some());
        let record: NetworkRecord = serde_json::from_str(&saved).unwrap();
        assert_eq!(record.attached_names(), ["vmknt9"]);
        Network::from_record(record).teardown().unwrap();
        assert_eq!(host.links_summary(), links0);
        assert_eq!(host.all_addrs(), addrs0);
        assert_eq!(host.nft_text(), nft0);
        assert_eq!(sysctl_forwarding(&host, "up0"), "0");
    });
}
