//! Errors print each cause once.
//!
//! A VMM reports an error as its message followed by `: cause` for every `source()`, as the
//! examples do. An error that both interpolates its source into its message and returns it
//! from `source()` makes that line say the same thing twice (or three times, when the source
//! does it too). Each test provokes a real failure through the public API and checks the
//! printed chain.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use vmkit::snapshot::{self, MemoryRestore};
use vmkit::vm_memory::{FileOffset, GuestAddress};
use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
use vmkit_boot::linux;

/// The error and its causes, outermost first.
fn chain(err: &dyn Error) -> Vec<String> {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts
}

/// Prints `err` as a VMM does and checks that no cause's text appears twice in the line.
/// Returns the line.
fn printed_once(err: &dyn Error) -> String {
    let parts = chain(err);
    let line = parts.join(": ");
    for (depth, part) in parts.iter().enumerate() {
        assert!(!part.is_empty(), "cause {depth} has no message: {line}");
        assert_eq!(
            line.matches(part.as_str()).count(),
            1,
            "cause {depth} ({part:?}) is printed more than once: {line}"
        );
    }
    line
}

/// A fresh file under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("vmkit-error-chain-{}-{name}", std::process::id()));
        let mut file = File::create(&path).expect("create a temporary file");
        file.write_all(contents).expect("write a temporary file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn guest_memory() -> vmkit::GuestMemoryMmap {
    let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty())
        .expect("anonymous guest RAM");
    vmkit::GuestMemoryMmap::from_arc_regions(vec![ram.mapping().clone()]).expect("one region")
}

#[test]
fn a_bzimage_with_a_bad_header() {
    // Not ELF, and no "HdrS" setup header where a bzImage has one.
    let image = TempFile::new("bad-bzimage", &[0u8; 0x2000]);
    let err = linux::load_kernel(&guest_memory(), &mut File::open(&image.0).unwrap())
        .expect_err("zeros are no kernel");
    let line = printed_once(&err);
    assert!(line.contains("no \"HdrS\" magic at offset 0x202"), "{line}");
}

#[test]
fn a_kernel_image_that_cannot_be_read() {
    // A directory opens, but reading it fails.
    let err = linux::load_kernel_file(&guest_memory(), &File::open("/").unwrap())
        .expect_err("a directory is no kernel");
    let line = printed_once(&err);
    assert!(line.contains("Is a directory"), "{line}");
}

#[test]
fn an_initrd_that_cannot_be_read() {
    let memory = guest_memory();
    let kernel_file = TempFile::new("kernel", vmkit_guests::minimal::ELF);
    let kernel = linux::load_kernel(&memory, &mut File::open(&kernel_file.0).unwrap())
        .expect("the minimal kernel loads");
    let err = linux::load_initrd(&memory, &mut File::open("/").unwrap(), &kernel, 4 << 20)
        .expect_err("a directory is no initrd");
    printed_once(&err);
}

#[test]
fn a_missing_snapshot() {
    let hypervisor = vmkit::open().expect("these tests need a hypervisor (/dev/kvm)");
    let dir = Path::new("/nonexistent/vmkit-snapshot");
    let err = snapshot::restore(dir, hypervisor.as_ref(), MemoryRestore::Lazy)
        .err()
        .expect("there is no snapshot there");
    let line = printed_once(&err);
    assert!(line.contains("No such file or directory"), "{line}");
    // The same through the crate-level error.
    let err = vmkit::Error::from(err);
    printed_once(&err);
}

#[test]
fn a_state_file_that_is_no_snapshot() {
    let hypervisor = vmkit::open().expect("these tests need a hypervisor (/dev/kvm)");
    let dir = std::env::temp_dir().join(format!("vmkit-error-chain-{}-snap", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(snapshot::STATE_FILE), [0x5a; 4096]).unwrap();
    let result = snapshot::restore(&dir, hypervisor.as_ref(), MemoryRestore::Lazy);
    let _ = fs::remove_dir_all(&dir);
    let err = result.err().expect("the state file is garbage");
    printed_once(&err);
}

#[test]
fn overlapping_memory_regions() {
    let hypervisor = vmkit::open().expect("these tests need a hypervisor (/dev/kvm)");
    let vm = hypervisor.create_vm(&VmConfig::default()).unwrap();
    let region = |addr| MemoryRegion::anonymous(GuestAddress(addr), 0x4000, MemoryFlags::empty());
    vm.add_memory_region(region(0).unwrap()).unwrap();
    let err = vm
        .add_memory_region(region(0x2000).unwrap())
        .expect_err("the regions overlap");
    printed_once(&err);
    printed_once(&vmkit::Error::from(err));
}

#[test]
fn a_memory_region_past_the_end_of_its_file() {
    let backing = TempFile::new("short-backing", &[0u8; 0x1000]);
    let file = File::open(&backing.0).unwrap();
    let err = MemoryRegion::from_file(
        GuestAddress(0),
        0x10_0000,
        FileOffset::new(file, 0),
        MemoryFlags::empty(),
    )
    .expect_err("the file is shorter than the region");
    printed_once(&err);
    printed_once(&vmkit::Error::from(err));
}

#[test]
fn an_unsupported_operation_names_the_operation_once() {
    let hypervisor = vmkit::open().expect("these tests need a hypervisor (/dev/kvm)");
    let vm = hypervisor.create_vm(&VmConfig::default()).unwrap();
    // Without an irqchip, an IRQ line cannot be set (on KVM: NoIrqchip; elsewhere:
    // Unsupported).
    let err = vm.set_irq_line(4, true).expect_err("no irqchip");
    printed_once(&vmkit::Error::from(err));
}
