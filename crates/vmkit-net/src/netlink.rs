//! A small blocking rtnetlink client: the link and address operations the
//! network modes need.
//!
//! Messages are `netlink-packet-route`'s types, sent on a `netlink-sys`
//! socket and answered synchronously: no async runtime. The socket lives
//! in the network namespace of the thread that opened it.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Errors of netlink requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The netlink socket could not be opened or used.
    #[error("netlink socket")]
    Socket(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{op} {target}")]
    Request {
        /// What was asked.
        op: &'static str,
        /// The link or address concerned.
        target: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A reply could not be decoded.
    #[error("{op} {target}: undecodable reply: {reason}")]
    Decode {
        /// What was asked.
        op: &'static str,
        /// The link or address concerned.
        target: String,
        /// The decoder's complaint.
        reason: String,
    },
}

/// A network interface, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The interface index.
    pub index: u32,
    /// The name.
    pub name: String,
    /// The kind (`bridge`, `tun`, `veth`, …), if it has one.
    pub kind: Option<String>,
    /// The index of the bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
    /// Whether it is administratively up.
    pub up: bool,
    /// The alias (`ip link set … alias …`), if set.
    pub alias: Option<String>,
    /// The hardware address.
    pub mac: Option<[u8; 6]>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            alias: None,
            mac: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Controller(i) if *i != 0 => l.master = Some(*i),
                LinkAttribute::IfAlias(s) if !s.is_empty() => l.alias = Some(s.clone()),
                LinkAttribute::Address(b) => l.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// Whether the link is a bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// An rtnetlink connection in the calling thread's network namespace.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.saturating_abs())
}

impl Rtnl {
    /// Opens a netlink route socket.
    pub fn new() -> Result<Rtnl, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` (plus `NLM_F_REQUEST`) and collects the
    /// replies until the acknowledgement or the end of the dump.
    fn request(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let req_err = |source| NetlinkError::Request {
            op,
            target: target.to_string(),
            source,
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0).map_err(req_err)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            self.sock.recv(&mut buf, 0).map_err(req_err)?;
            let n = buf.len();
            let mut at = 0usize;
            while at < n {
                let Some(bytes) = buf.get(at..n) else { break };
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                    NetlinkError::Decode {
                        op,
                        target: target.to_string(),
                        reason: e.to_string(),
                    }
                })?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue; // a stale reply to an earlier request
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(req_err(errno(code.get()))),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
                if !dump && flags & NLM_F_ACK == 0 && !replies.is_empty() {
                    return Ok(replies);
                }
            }
        }
    }

    /// The link named `name`, or `None` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("get link", name, RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(NetlinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The link with index `index`, or `None`.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let target = format!("index {index}");
        match self.request("get link", &target, RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(NetlinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let m = LinkMessage::default();
        let replies = self.request(
            "dump links",
            "",
            RouteNetlinkMessage::GetLink(m),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates a bridge named `name` (failing if a link of that name exists).
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            "create bridge",
            name,
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Deletes link `index`.
    pub fn del_link(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(
            "delete link",
            name,
            RouteNetlinkMessage::DelLink(m),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    fn set_link(
        &mut self,
        op: &'static str,
        link: &Link,
        attrs: Vec<LinkAttribute>,
        up: Option<bool>,
    ) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = link.index;
        if let Some(up) = up {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        }
        m.attributes = attrs;
        self.request(op, &link.name, RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
        Ok(())
    }

    /// Sets the link administratively up or down.
    pub fn set_up(&mut self, link: &Link, up: bool) -> Result<(), NetlinkError> {
        self.set_link("set link up/down", link, Vec::new(), Some(up))
    }

    /// Enslaves the link to bridge `master`, or frees it (`None`).
    pub fn set_master(&mut self, link: &Link, master: Option<u32>) -> Result<(), NetlinkError> {
        let attrs = vec![LinkAttribute::Controller(master.unwrap_or(0))];
        self.set_link("set link master", link, attrs, None)
    }

    /// Sets the link's alias.
    pub fn set_alias(&mut self, link: &Link, alias: &str) -> Result<(), NetlinkError> {
        let attrs = vec![LinkAttribute::IfAlias(alias.to_string())];
        self.set_link("set link alias", link, attrs, None)
    }

    /// The IPv4 addresses (with prefix lengths) of link `index`.
    pub fn ipv4_addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.request(
            "dump addresses",
            &format!("index {index}"),
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in &replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            for attr in &a.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                    out.push((*ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Adds the IPv4 address `addr/prefix_len` (with its broadcast
    /// address) to the link.
    pub fn add_ipv4_addr(
        &mut self,
        link: &Link,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.index = link.index;
        let host_mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
        let brd = Ipv4Addr::from(u32::from(addr) | host_mask);
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        m.attributes.push(AddressAttribute::Broadcast(brd));
        self.request(
            "add address",
            &format!("{addr}/{prefix_len} on {}", link.name),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        )?;
        Ok(())
    }
}
