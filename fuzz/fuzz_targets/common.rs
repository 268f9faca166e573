// Shared by the fuzz targets: guest memory built from the fuzz input.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

pub type Mem = GuestMemoryMmap<()>;

/// Size of the first region; the input image is copied there.
pub const RAM: usize = 0x1_0000;

/// 64 KiB at 0 filled from `image`, plus a 4 KiB region at 0x2_0000 so that
/// buffers can hit a second region and the hole between.
pub fn memory(image: &[u8]) -> Mem {
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM), (GuestAddress(0x2_0000), 0x1000)])
            .expect("guest memory");
    let n = image.len().min(RAM);
    mem.write_slice(&image[..n], GuestAddress(0))
        .expect("image fits");
    mem
}

/// What a device does with a validated buffer: the invariant is that it is
/// in guest memory; writable ones get written, as a device would.
pub fn touch(mem: &Mem, addr: GuestAddress, len: u32, write: bool) {
    if len == 0 {
        return;
    }
    assert!(
        mem.check_range(addr, len as usize, Permissions::Read),
        "yielded buffer {:#x}+{len} is outside guest memory",
        addr.0
    );
    if write {
        let n = (len as usize).min(64);
        mem.write_slice(&[0xa5; 64][..n], addr).expect("in memory");
    }
}
