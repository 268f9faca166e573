//! A TAP device as a [`NetBackend`] for virtio-net.
//!
//! [`Tap::open`] opens `/dev/net/tun` non-blocking and creates (or attaches
//! to) a TAP interface with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, sets the
//! virtio-net header size to 12 bytes (`TUNSETVNETHDRSZ`, the virtio 1.x
//! header with `num_buffers`), and probes which offloads the kernel can
//! produce (`TUNSETOFFLOAD`). The device then offers exactly those to the
//! guest, and sets them to what the guest accepted
//! ([`NetBackend::set_rx_offloads`]).
//!
//! Frames move with one `writev` or `readv` each, straight between the
//! TAP and guest memory ([`NetBackend::vectored`]).
//!
//! A VMM polls [`Tap::as_raw_fd`] for readability (take it before moving
//! the `Tap` into the device) and calls the transport's
//! `process_queue(RXQ)` when it fires, `process_queue(TXQ)` on the guest's
//! TX notification (an ioeventfd).
//!
//! The interface lives as long as the `Tap` (it is not persistent): closing
//! it removes the interface, and with it its bridge membership. A
//! persistent TAP made for a given user ([`persistent`](crate::persistent))
//! outlives it: [`Tap::open`] of its name attaches to it, and needs no
//! capability when the calling process is its owner.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use vmkit_virtio::net::{
    BackendCapabilities, NetBackend, NET_HDR_LEN, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The longest interface name (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// Errors opening or configuring a TAP device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    /// The interface name is empty, too long, or has characters the kernel refuses.
    #[error("interface name {name:?} is invalid: 1 to 15 bytes, no '/', ':', whitespace or NUL")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The path.
        path: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's TUN driver lacks a feature this backend needs.
    #[error("the TUN driver does not support {feature} (features {features:#x})")]
    Unsupported {
        /// The missing feature.
        feature: &'static str,
        /// What `TUNGETFEATURES` returned.
        features: u32,
    },
    /// An ioctl failed.
    #[error("{ioctl} on TAP {name:?} failed")]
    Ioctl {
        /// The ioctl.
        ioctl: &'static str,
        /// The interface name (as requested, or as created).
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How to open a TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapOptions {
    /// The interface name; `%d` lets the kernel pick a number
    /// (`vmtap%d` gives `vmtap0`, `vmtap1`, …). An existing TAP interface
    /// of that name (a persistent one, made by `ip tuntap add`) is attached to.
    pub name: String,
    /// Exchange frames with a virtio-net header (needed for offloads).
    pub vnet_hdr: bool,
}

impl Default for TapOptions {
    /// `vmtap%d`, with the virtio-net header.
    fn default() -> Self {
        TapOptions {
            name: "vmtap%d".to_string(),
            vnet_hdr: true,
        }
    }
}

/// A TAP interface, opened non-blocking.
///
/// ```no_run
/// use vmkit_net::Tap;
/// use vmkit_virtio::net::{Net, NetOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tap = Tap::open("vmtap%d")?; // needs CAP_NET_ADMIN
/// println!("created {}", tap.name());
/// let fd = std::os::fd::AsRawFd::as_raw_fd(&tap); // poll this for input
/// let net = Net::new(tap, NetOptions::default())?;
/// # let _ = (fd, net);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
    /// Receive offloads (`GUEST_*` feature bits) the kernel accepted.
    rx_offloads: u64,
}

/// `GUEST_*` feature bits and their `TUN_F_*` flags.
const OFFLOAD_MAP: [(u64, libc::c_uint); 5] = [
    (VIRTIO_NET_F_GUEST_CSUM, libc::TUN_F_CSUM),
    (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
    (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
    (VIRTIO_NET_F_GUEST_ECN, libc::TUN_F_TSO_ECN),
    (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
];

/// The `TUN_F_*` flags for `GUEST_*` feature bits.
pub fn tun_offload_flags(offloads: u64) -> libc::c_uint {
    OFFLOAD_MAP
        .iter()
        .filter(|(f, _)| offloads & f != 0)
        .fold(0, |acc, (_, t)| acc | t)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl Tap {
    /// Opens (creating if needed) the TAP interface `name`, with the
    /// virtio-net header. See [`TapOptions::name`].
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_with(&TapOptions {
            name: name.to_string(),
            vnet_hdr: true,
        })
    }

    /// Opens a TAP interface as `options` say.
    pub fn open_with(options: &TapOptions) -> Result<Tap, TapError> {
        Tap::open_flagged(options, 0)
    }

    /// [`Tap::open_with`], with more `TUNSETIFF` flags (`IFF_TUN_EXCL`: only create).
    pub(crate) fn open_flagged(options: &TapOptions, extra: libc::c_int) -> Result<Tap, TapError> {
        let name = &options.name;
        if !valid_name(name) {
            return Err(TapError::InvalidName { name: name.clone() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::Open {
                path: TUN_PATH,
                source,
            })?;
        let fd = file.as_raw_fd();
        let ioctl_err = |ioctl, name: &str, source| TapError::Ioctl {
            ioctl,
            name: name.to_string(),
            source,
        };

        let mut features: libc::c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int to the pointer,
        // which points to a live local of that type; `fd` is open.
        let r = unsafe { libc::ioctl(fd, libc::TUNGETFEATURES, &mut features) };
        if r < 0 {
            return Err(ioctl_err(
                "TUNGETFEATURES",
                name,
                io::Error::last_os_error(),
            ));
        }
        // The flags are c_int constants that fit in 16 bits.
        let mut flags = (libc::IFF_TAP | libc::IFF_NO_PI | extra) as libc::c_short;
        if options.vnet_hdr {
            if features & libc::IFF_VNET_HDR as libc::c_uint == 0 {
                return Err(TapError::Unsupported {
                    feature: "IFF_VNET_HDR",
                    features,
                });
            }
            flags |= libc::IFF_VNET_HDR as libc::c_short;
        }

        let mut ifr = libc::ifreq {
            ifr_name: [0; libc::IFNAMSIZ],
            ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: flags },
        };
        for (dst, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = b as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `ifr` is (libc's definition), NUL-terminated name included
        // (at most 15 bytes were copied into 16).
        let r = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr) };
        if r < 0 {
            return Err(ioctl_err("TUNSETIFF", name, io::Error::last_os_error()));
        }
        // The kernel wrote the interface's real name (e.g. `%d` expanded).
        let created: Vec<u8> = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let created = String::from_utf8_lossy(&created).into_owned();

        let mut tap = Tap {
            file,
            name: created,
            vnet_hdr: options.vnet_hdr,
            rx_offloads: 0,
        };
        if options.vnet_hdr {
            let size: libc::c_int = NET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, a
            // live local of that type.
            let r = unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) };
            if r < 0 {
                return Err(ioctl_err(
                    "TUNSETVNETHDRSZ",
                    &tap.name,
                    io::Error::last_os_error(),
                ));
            }
            tap.rx_offloads = tap.probe_offloads()?;
        }
        Ok(tap)
    }

    /// Finds the largest set of receive offloads the kernel accepts, then
    /// turns them all off until the guest says what it takes.
    fn probe_offloads(&self) -> Result<u64, TapError> {
        let all: u64 = OFFLOAD_MAP.iter().fold(0, |a, (f, _)| a | f);
        let candidates = [
            all,
            all & !VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_CSUM,
        ];
        let mut supported = 0;
        for c in candidates {
            if self.set_offload_flags(tun_offload_flags(c)).is_ok() {
                supported = c;
                break;
            }
        }
        self.set_offload_flags(0)
            .map_err(|source| TapError::Ioctl {
                ioctl: "TUNSETOFFLOAD",
                name: self.name.clone(),
                source,
            })?;
        Ok(supported)
    }

    fn set_offload_flags(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // long of TUN_F_* flags); no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs a TUN ioctl that takes its argument by value (`TUNSETPERSIST`,
    /// `TUNSETOWNER`, `TUNSETGROUP`), naming it in the error.
    pub(crate) fn set_value(
        &self,
        ioctl: &'static str,
        request: libc::Ioctl,
        value: libc::c_ulong,
    ) -> Result<(), TapError> {
        // SAFETY: the TUN ioctls this is called with take an integer by
        // value; no memory is passed.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), request, value) };
        if r < 0 {
            return Err(TapError::Ioctl {
                ioctl,
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface name (with `%d` expanded).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry the virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The receive offloads (`GUEST_*` feature bits) the kernel can produce.
    pub fn supported_rx_offloads(&self) -> u64 {
        self.rx_offloads
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl NetBackend for Tap {
    /// With the header: transmit checksum, TSOv4, TSOv6 and ECN (the TUN
    /// driver takes them all, and segments or checksums in software where
    /// the packet goes), and the receive offloads found by probing.
    /// Without it: nothing.
    fn capabilities(&self) -> BackendCapabilities {
        if !self.vnet_hdr {
            return BackendCapabilities::default();
        }
        BackendCapabilities {
            vnet_hdr: true,
            tx_offloads: VIRTIO_NET_F_CSUM
                | VIRTIO_NET_F_HOST_TSO4
                | VIRTIO_NET_F_HOST_TSO6
                | VIRTIO_NET_F_HOST_ECN,
            rx_offloads: self.rx_offloads,
        }
    }

    fn set_rx_offloads(&mut self, offloads: u64) -> io::Result<()> {
        if !self.vnet_hdr {
            return if offloads == 0 {
                Ok(())
            } else {
                Err(io::Error::from(io::ErrorKind::Unsupported))
            };
        }
        if offloads & !self.rx_offloads != 0 {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        self.set_offload_flags(tun_offload_flags(offloads))
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let n = (&self.file).write(packet)?;
        if n != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("TAP took {n} of {} bytes", packet.len()),
            ));
        }
        Ok(())
    }

    /// `writev` and `readv` straight between the TAP and guest memory.
    fn vectored(&self) -> bool {
        true
    }

    /// One `writev` of the header and the frame's pieces.
    fn send_vectored<S: BitmapSlice>(
        &mut self,
        header: &[u8],
        frame: &[VolatileSlice<'_, S>],
    ) -> io::Result<()> {
        let total = header.len() + frame.iter().map(VolatileSlice::len).sum::<usize>();
        let n = with_iovecs(
            header.as_ptr().cast_mut(),
            header.len(),
            frame,
            |iov, count| {
                // SAFETY: the iovecs describe `header` and the guest memory
                // slices of `frame`, all live for the call; writev only reads them.
                unsafe { libc::writev(self.file.as_raw_fd(), iov, count) }
            },
        )?;
        if n != total {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("TAP took {n} of {total} bytes"),
            ));
        }
        Ok(())
    }

    /// One `readv` into the header and the frame's pieces.
    fn recv_vectored<S: BitmapSlice>(
        &mut self,
        header: &mut [u8],
        frame: &[VolatileSlice<'_, S>],
    ) -> io::Result<usize> {
        with_iovecs(header.as_mut_ptr(), header.len(), frame, |iov, count| {
            // SAFETY: the iovecs describe `header` (borrowed mutably) and
            // the guest memory slices of `frame`, writable and live for
            // the call; readv writes only inside them.
            unsafe { libc::readv(self.file.as_raw_fd(), iov, count) }
        })
    }
}

/// The most pieces a packet is handed to the kernel in (`UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Pieces described on the stack; more take a heap vector.
const STACK_IOV: usize = 32;

/// Calls `f` with iovecs for `head` (`len` bytes, skipped if empty) then
/// `frame`, and turns its `ssize_t` result into a byte count or the OS
/// error. More than [`MAX_IOV`] pieces is `InvalidInput`.
fn with_iovecs<S: BitmapSlice>(
    head: *mut u8,
    len: usize,
    frame: &[VolatileSlice<'_, S>],
    f: impl FnOnce(*const libc::iovec, libc::c_int) -> isize,
) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let count = usize::from(len > 0) + frame.len();
    if count > MAX_IOV {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a packet in {count} pieces (at most {MAX_IOV})"),
        ));
    }
    let mut stack = [empty; STACK_IOV];
    let mut heap = Vec::new();
    let iov: &mut [libc::iovec] = if count <= STACK_IOV {
        stack.get_mut(..count).unwrap_or(&mut [])
    } else {
        heap.resize(count, empty);
        &mut heap
    };
    let pieces = (len > 0)
        .then_some((head, len))
        .into_iter()
        .chain(frame.iter().map(|s| (s.ptr_guard_mut().as_ptr(), s.len())));
    for (v, (base, n)) in iov.iter_mut().zip(pieces) {
        *v = libc::iovec {
            iov_base: base.cast(),
            iov_len: n,
        };
    }
    // count <= MAX_IOV fits a c_int.
    let r = f(iov.as_ptr(), count as libc::c_int);
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}
