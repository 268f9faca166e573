//! The unprivileged TAP path, end to end: root makes a persistent TAP owned by an ordinary
//! user on an isolated network (`vmkit_net::persistent::create`), a process of that user
//! with no capabilities opens it by name (`Tap::open`) and sends a frame that a root-opened
//! TAP on the same bridge receives, then root removes the TAP and the network.
//!
//! The user is `$VMKIT_UNPRIVILEGED_USER` (`ci/unprivileged.sh` sets `vmkit-ci`), or
//! `nobody`. The child is this test's own binary, copied where that user can run it and
//! started in the test's network namespace as that user. Needs root, `ip`, and
//! `/dev/net/tun` read-writable by others (mode 0666, as distributions set it); skipped
//! with the reason otherwise (failed under `VMKIT_NET_TESTS=require`).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use vmkit_net::persistent::{self, PersistentError, Removal, TapAccess};
use vmkit_net::{Attachment, Departure, NetBackend, Tap, TapError, TapMode};

/// The first argument that makes this binary the child.
const CHILD: &str = "unprivileged-child";
const TAP: &str = "vmkunp0t";
const BRIDGE: &str = "vmkunp0";
/// IEEE 802 local experimental ethertype: nothing else on the bridge sends it.
const ETHERTYPE: u16 = 0x88b5;
const HDR: usize = vmkit_virtio::net::NET_HDR_LEN;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD) {
        child(&args[2]);
        return;
    }
    if parent() {
        println!("test an_unprivileged_process_opens_its_persistent_tap ... ok");
    }
}

/// The payload that marks this test's frame.
fn marker(pid: u32) -> Vec<u8> {
    format!("vmkit unprivileged tap {pid}").into_bytes()
}

/// This process's capability set `field` (`CapEff`, `CapPrm`…) from /proc.
fn caps(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap();
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// Waits up to `ms` for `fd` to be readable.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0
}

/// The child: as the user, without capabilities; opens the TAP and sends frames until the
/// parent says (a line on stdin) that one arrived.
fn child(name: &str) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_ne!(uid, 0, "the child runs as an ordinary user");
    assert_eq!(caps("CapEff"), 0, "no effective capabilities");
    assert_eq!(caps("CapPrm"), 0, "no permitted capabilities");
    println!("uid {uid}, CapEff 0, CapPrm 0");
    // Creating a TAP needs CAP_NET_ADMIN: refused.
    match Tap::open("vmkunpx%d") {
        Err(TapError::Ioctl { ioctl, source, .. }) => {
            assert_eq!(ioctl, "TUNSETIFF");
            assert_eq!(source.raw_os_error(), Some(libc::EPERM), "{source}");
            println!("creating a TAP: refused ({source})");
        }
        other => panic!("an unprivileged process created a TAP: {other:?}"),
    }
    let mut tap = Tap::open(name).unwrap();
    assert_eq!(tap.name(), name);
    assert!(tap.vnet_hdr());
    println!("opened {name}");
    let mut frame = vec![0u8; HDR];
    frame.extend(eth(
        [0xff; 6],
        [0x52, 0x54, 0x00, 0x0b, 0x00, 0x01],
        ETHERTYPE,
        &marker(std::process::id()),
    ));
    let stdin = std::io::stdin();
    // The bridge forwards from the port once it sees the TAP's carrier (the kernel reports
    // it asynchronously): send until the parent has one; bounded, so that a lost parent
    // leaves no process behind.
    for _ in 0..600 {
        tap.send(&frame).unwrap();
        if readable(stdin.as_raw_fd(), 100) {
            let mut line = String::new();
            stdin.lock().read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "got it");
            println!("delivered");
            return;
        }
    }
    panic!("the parent never received a frame");
}

/// `id FLAG user`, trimmed.
fn id(flag: &str, user: &str) -> String {
    run("id", &[flag, user]).trim().to_string()
}

/// The test; `false` if it was skipped (and said why).
fn parent() -> bool {
    if !host_can("an_unprivileged_process_opens_its_persistent_tap", false) {
        return false;
    }
    let tun_mode = std::fs::metadata("/dev/net/tun").unwrap().mode();
    if tun_mode & 0o006 != 0o006 {
        let msg = format!(
            "SKIP an_unprivileged_process_opens_its_persistent_tap: /dev/net/tun has mode \
             {:o}, not read-writable by others (distributions make it 0666; \
             ci/unprivileged.sh does)",
            tun_mode & 0o777
        );
        if std::env::var("VMKIT_NET_TESTS").as_deref() == Ok("require") {
            panic!("{msg} (VMKIT_NET_TESTS=require)");
        }
        eprintln!("{msg}");
        return false;
    }
    let user = std::env::var("VMKIT_UNPRIVILEGED_USER").unwrap_or_else(|_| "nobody".into());
    let uid: u32 = id("-u", &user).parse().unwrap();
    let gid: u32 = id("-g", &user).parse().unwrap();
    let user_name = id("-un", &user);
    assert_ne!(uid, 0, "{user} must not be root");

    let ns = Netns::new("unpriv");
    let mode: TapMode = format!("isolated:{BRIDGE}").parse().unwrap();
    let access = TapAccess {
        user: Some(uid),
        group: None,
    };
    ns.run(|| persistent::create(TAP, access, &mode)).unwrap();
    let link = ns.link(TAP).expect("the TAP exists");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["type"], "tap");
    assert_eq!(info["persist"], true);
    assert_eq!(info["vnet_hdr"], true);
    assert_eq!(info["pi"], false);
    assert_eq!(info["multi_queue"], false);
    assert_eq!(info["user"], user_name.as_str());
    assert_eq!(link["master"], BRIDGE);
    // Handed over to its port: no owner record of this (or any) process is left.
    let ns_ino = std::fs::metadata(format!("/run/netns/{}", ns.name))
        .unwrap()
        .ino();
    let records = format!("/run/vmkit-net/net-{ns_ino}/{BRIDGE}");
    let left: Vec<_> = std::fs::read_dir(&records)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "owner records left in {records}: {left:?}");
    // A second create refuses the existing link.
    let again = ns.run(|| persistent::create(TAP, access, &mode));
    assert!(
        matches!(again, Err(PersistentError::Exists { ref name }) if name == TAP),
        "{again:?}"
    );

    // Root's TAP on the same bridge: the observer.
    let (attachment, mut peer) = ns.run(|| Attachment::open(&mode, "vmkunpp%d")).unwrap();

    // The child's binary, where the user can reach it.
    let dir = std::env::temp_dir().join(format!("vmkit-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("unprivileged_tap");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let netns = File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let netns_fd = netns.as_raw_fd();
    let mut command = Command::new(&exe);
    command
        .args([CHILD, TAP])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .current_dir(&dir);
    // Between fork and exec: into the test's namespace, then the user's ids. Dropping from
    // root to an ordinary uid clears every capability set (no SECBIT_KEEP_CAPS); the child
    // checks.
    let hook = move || {
        let ok = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY: setns takes the namespace file, open in the parent until after the spawn.
        ok(unsafe { libc::setns(netns_fd, libc::CLONE_NEWNET) })?;
        // SAFETY: an empty group list: a null pointer with length 0.
        ok(unsafe { libc::setgroups(0, std::ptr::null()) })?;
        // SAFETY: plain ids, no memory.
        ok(unsafe { libc::setresgid(gid, gid, gid) })?;
        // SAFETY: plain ids, no memory.
        ok(unsafe { libc::setresuid(uid, uid, uid) })
    };
    // SAFETY: the hook makes only async-signal-safe system calls on values copied into it
    // (no allocation: `last_os_error` reads errno).
    unsafe {
        command.pre_exec(hook);
    }
    let mut child = command.spawn().unwrap();
    let mut to_child = child.stdin.take().unwrap();

    // The frame crosses the bridge to the observer (bounded by the child's own 60 s).
    let want = marker(child.id());
    let mut buf = vec![0u8; 65536];
    let mut got = false;
    for _ in 0..700 {
        if !readable(peer.as_raw_fd(), 100) {
            continue;
        }
        let n = match peer.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        };
        let frame = &buf[HDR..n];
        if frame.len() >= 14
            && frame[12..14] == ETHERTYPE.to_be_bytes()
            && frame[14..].starts_with(&want)
        {
            got = true;
            break;
        }
    }
    assert!(got, "the child's frame reached the bridge's other port");
    // The VMM has it open: removing it now is refused, and changes nothing.
    let busy = ns.run(|| persistent::remove(TAP, &mode));
    assert!(
        matches!(busy, Err(PersistentError::InUse { ref name }) if name == TAP),
        "{busy:?}"
    );
    to_child.write_all(b"got it\n").unwrap();
    drop(to_child);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    print!("{out}");
    assert!(status.success(), "child: {status}\n{out}");
    assert!(out.contains("CapEff 0, CapPrm 0"), "{out}");
    assert!(out.contains("creating a TAP: refused"), "{out}");
    assert!(out.contains(&format!("opened {TAP}")), "{out}");
    assert!(out.contains("delivered"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();

    // The VMM is gone; its TAP stays on the bridge for the next run.
    let link = ns.link(TAP).expect("the persistent TAP outlives its user");
    assert_eq!(link["master"], BRIDGE);

    // The observer leaves (the persistent TAP keeps the network), then root removes the TAP
    // and, the last port gone, the network.
    drop(peer);
    let closed = ns.run(|| attachment.close());
    assert!(closed.detach.is_ok(), "{closed:?}");
    assert!(
        matches!(
            closed.network,
            Ok(Departure::LeftToOthers { ref ports, .. }) if ports == &[TAP.to_string()]
        ),
        "{closed:?}"
    );
    let removal = ns.run(|| persistent::remove(TAP, &mode)).unwrap();
    assert_eq!(
        removal,
        Removal {
            tap_deleted: true,
            network: Some(Departure::TornDown {
                bridge: BRIDGE.into()
            }),
        }
    );
    assert!(ns.link(TAP).is_none(), "the TAP is gone");
    assert!(ns.link(BRIDGE).is_none(), "the bridge is gone");
    // Idempotent.
    let again = ns.run(|| persistent::remove(TAP, &mode)).unwrap();
    assert_eq!(
        again,
        Removal {
            tap_deleted: false,
            network: None,
        }
    );
    true
}
