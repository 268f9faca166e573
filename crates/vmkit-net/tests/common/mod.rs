//! Test helpers: network namespaces made by the test, `ip -j` / `nft -j`
//! as independent observers, a minimal split-queue driver, and packet
//! crafting for a "guest" that the test plays itself.
#![allow(dead_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// ---------------------------------------------------------------------------
// Host requirements and namespaces.

fn have(cmd: &str, version_flag: &str) -> bool {
    Command::new(cmd)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether this host can run the network tests: root, `/dev/net/tun`,
/// `ip`, and (if `nft`) the `nft` binary. Otherwise prints why the test is
/// skipped, unless `VMKIT_NET_TESTS=require` (set in CI), which fails it.
pub fn host_can(test: &str, nft: bool) -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let mut missing = Vec::new();
    if !root {
        missing.push("root");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    if !have("ip", "-V") {
        missing.push("ip (iproute2)");
    }
    if nft && !have("nft", "--version") {
        missing.push("nft (nftables)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("SKIP {test}: this host lacks {}", missing.join(", "));
    if std::env::var("VMKIT_NET_TESTS").as_deref() == Ok("require") {
        panic!("{msg} (VMKIT_NET_TESTS=require)");
    }
    eprintln!("{msg}");
    false
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace made by the test (`ip netns add`), deleted on drop
/// with everything in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("vmkt-{}-{n}-{role}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args…`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `ip -n <ns> -j args…` as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.ip(&a);
        if out.trim().is_empty() {
            return Value::Array(Vec::new());
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
    }

    /// A command run inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// The nftables ruleset as text (no handles: comparable across
    /// replacements).
    pub fn nft_text(&self) -> String {
        self.exec(&["nft", "list", "ruleset"])
    }

    /// The nftables ruleset as JSON.
    pub fn nft_json(&self) -> Value {
        serde_json::from_str(&self.exec(&["nft", "-j", "list", "ruleset"])).unwrap()
    }

    pub fn sysctl(&self, path: &str) -> String {
        self.exec(&["cat", &format!("/proc/sys/{path}")])
            .trim()
            .to_string()
    }

    /// The link `name` as `ip -d -j link show` reports it, if any.
    pub fn link(&self, name: &str) -> Option<Value> {
        let all = self.ip_json(&["-d", "link", "show"]);
        all.as_array()?
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    /// Names of all links.
    pub fn link_names(&self) -> Vec<String> {
        let all = self.ip_json(&["link", "show"]);
        let mut v: Vec<String> = all
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A comparable summary of links: name, kind, master, alias.
    pub fn links_summary(&self) -> Vec<String> {
        let all = self.ip_json(&["-d", "link", "show"]);
        let mut v: Vec<String> = all
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        let up = l["flags"]
                            .as_array()
                            .is_some_and(|f| f.iter().any(|x| x == "UP"));
                        format!(
                            "{} kind={} master={} alias={} up={up}",
                            l["ifname"], l["linkinfo"]["info_kind"], l["master"], l["ifalias"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// IPv4 addresses of `dev` as "a.b.c.d/len".
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let all = self.ip_json(&["-4", "addr", "show", "dev", dev]);
        let mut v = Vec::new();
        for l in all.as_array().into_iter().flatten() {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                v.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap(),
                    a["prefixlen"]
                ));
            }
        }
        v
    }

    /// All addresses (both families) of every link, comparable.
    pub fn all_addrs(&self) -> Vec<String> {
        let all = self.ip_json(&["addr", "show"]);
        let mut v = Vec::new();
        for l in all.as_array().into_iter().flatten() {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                v.push(format!("{} {}/{}", l["ifname"], a["local"], a["prefixlen"]));
            }
        }
        v.sort();
        v
    }

    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let l = self.link(dev).unwrap_or_else(|| panic!("no link {dev}"));
        parse_mac(l["address"].as_str().unwrap())
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns takes an open namespace file descriptor (kept open
    // for the call) and a namespace type; it changes only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------
// Packets.

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;

pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(proto)
        + len as u32
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram with a correct checksum.
pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = checksum(&u, pseudo_sum(src, dst, 17, len));
    let c = if c == 0 { 0xffff } else { c };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

/// Whether the UDP checksum of an IPv4/UDP packet (no options) is right.
pub fn udp_checksum_ok(ip: &[u8]) -> bool {
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let u = &ip[20..];
    checksum(u, pseudo_sum(src, dst, 17, u.len())) == 0
}

/// A TCP segment (no options) with a correct checksum, in an IPv4 packet.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(data);
    let c = checksum(&t, pseudo_sum(src, dst, 6, t.len()));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &t)
}

/// The pseudo-header sum a TCP/UDP checksum field holds for checksum
/// offload (NEEDS_CSUM): not complemented.
pub fn partial_csum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u16 {
    !checksum(&[], pseudo_sum(src, dst, proto, len))
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A decoded IPv4 packet inside an Ethernet frame.
#[derive(Debug, Clone)]
pub struct Ip4<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub packet: &'a [u8],
    pub payload: &'a [u8],
}

pub fn parse_ipv4(frame: &[u8]) -> Option<Ip4<'_>> {
    if frame.len() < 34 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let ip = ip.get(..total)?;
    Some(Ip4 {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        proto: ip[9],
        packet: ip,
        payload: ip.get(ihl..)?,
    })
}

/// The "guest" network stack the test plays: answers ARP for its address.
#[derive(Clone, Copy, Debug)]
pub struct Guest {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

impl Guest {
    /// The ARP reply to `frame` if it asks for this guest's address.
    pub fn arp_reply(&self, frame: &[u8]) -> Option<Vec<u8>> {
        if frame.len() < 42 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_ARP {
            return None;
        }
        let a = &frame[14..42];
        if u16::from_be_bytes([a[6], a[7]]) != 1 || a[24..28] != self.ip.octets() {
            return None;
        }
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        r.extend_from_slice(&self.mac);
        r.extend_from_slice(&self.ip.octets());
        r.extend_from_slice(&a[8..14]);
        r.extend_from_slice(&a[14..18]);
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&a[8..14]);
        Some(eth(dst, self.mac, ETH_ARP, &r))
    }

    /// A broadcast ARP request from this guest for `ip`.
    pub fn arp_request(&self, ip: Ipv4Addr) -> Vec<u8> {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        r.extend_from_slice(&self.mac);
        r.extend_from_slice(&self.ip.octets());
        r.extend_from_slice(&[0; 6]);
        r.extend_from_slice(&ip.octets());
        eth([0xff; 6], self.mac, ETH_ARP, &r)
    }

    pub fn udp_frame(
        &self,
        dst_mac: [u8; 6],
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        data: &[u8],
    ) -> Vec<u8> {
        eth(
            dst_mac,
            self.mac,
            ETH_IPV4,
            &udp(self.ip, sport, dst, dport, data),
        )
    }
}

// ---------------------------------------------------------------------------
// A minimal driver: split queues in guest memory, through the MMIO registers.

pub type Mem = GuestMemoryMmap<()>;

pub const MEM_SIZE: usize = 0x80_0000;
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

pub fn memory() -> std::sync::Arc<Mem> {
    std::sync::Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

/// Driver side of one split queue at 0x10000 * (index + 1), with a
/// free list of descriptors.
pub struct Vq {
    pub index: u32,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub avail_idx: u16,
    pub last_used: u16,
    free: Vec<u16>,
    chains: std::collections::HashMap<u16, Vec<u16>>,
}

impl Vq {
    pub fn new(index: u32, size: u16) -> Vq {
        let base = 0x1_0000 * (u64::from(index) + 1);
        Vq {
            index,
            size,
            desc: base,
            avail: base + 0x2000,
            used: base + 0x3000,
            avail_idx: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: Default::default(),
        }
    }

    /// Publishes a chain of (addr, len, device-writable) buffers.
    pub fn push(&mut self, mem: &Mem, bufs: &[(u64, u32, bool)]) -> u16 {
        let ids: Vec<u16> = (0..bufs.len())
            .map(|_| self.free.pop().expect("free descriptor"))
            .collect();
        for (k, &(addr, len, write)) in bufs.iter().enumerate() {
            let at = self.desc + 16 * u64::from(ids[k]);
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            let next = if k + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
                ids[k + 1]
            } else {
                0
            };
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = ids[0];
        self.chains.insert(head, ids);
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The next used entry: (head, len); frees its descriptors.
    pub fn pop_used(&mut self, mem: &Mem) -> Option<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let id: u32 = mem
            .read_obj(GuestAddress(self.used + 4 + 8 * slot))
            .unwrap();
        let len: u32 = mem
            .read_obj(GuestAddress(self.used + 8 + 8 * slot))
            .unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        let head = id as u16;
        if let Some(ids) = self.chains.remove(&head) {
            self.free.extend(ids);
        }
        Some((head, len))
    }
}

/// Register access to a virtio-mmio transport.
pub trait Regs {
    fn r32(&self, off: u64) -> u32;
    fn w32(&self, off: u64, v: u32);
}

impl<D: vmkit_virtio::VirtioDevice<Mem>> Regs
    for vmkit_virtio::mmio::MmioTransport<std::sync::Arc<Mem>, D>
{
    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w32(&self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }
}

/// Negotiates `features` (plus VERSION_1), sets up `queues`, DRIVER_OK.
pub fn bring_up(t: &impl Regs, features: u64, queues: &[&Vq]) {
    let features = features | (1 << 32);
    t.w32(0x70, 0);
    t.w32(0x70, 1);
    t.w32(0x70, 3);
    t.w32(0x24, 0);
    t.w32(0x20, features as u32);
    t.w32(0x24, 1);
    t.w32(0x20, (features >> 32) as u32);
    t.w32(0x70, 11);
    assert_eq!(t.r32(0x70) & 8, 8, "FEATURES_OK");
    for q in queues {
        t.w32(0x30, q.index);
        t.w32(0x38, u32::from(q.size));
        for (off, addr) in [(0x80, q.desc), (0x90, q.avail), (0xa0, q.used)] {
            t.w32(off, addr as u32);
            t.w32(off + 4, (addr >> 32) as u32);
        }
        t.w32(0x44, 1);
        assert_eq!(t.r32(0x44), 1);
    }
    t.w32(0x70, 15);
    assert_eq!(t.r32(0x70), 15, "DRIVER_OK, no NEEDS_RESET");
}
