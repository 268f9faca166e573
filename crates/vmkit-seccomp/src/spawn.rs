//! Starting a thread that is confined before it runs anything else.

use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::{Filter, SeccompError};

/// Why [`spawn`] started no confined thread.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The thread could not be created.
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    /// The thread could not install its filter; it has ended without running its work.
    #[error("the new thread could not confine itself")]
    Seccomp(#[source] SeccompError),
}

/// Starts a thread with `builder` that installs `filter` (when there is one) before it runs
/// `work`, and returns once the filter is in place, so that a VMM never has a device thread
/// running unconfined when it asked for a filter. If the filter cannot be installed, the
/// thread ends without running `work` (returning `refused()`, which nobody sees: it has
/// been joined) and the error is returned.
///
/// ```
/// let filter = vmkit_seccomp::Rules::base().compile()?;
/// let thread = vmkit_seccomp::spawn(
///     std::thread::Builder::new().name("worker".into()),
///     Some(filter),
///     || false,
///     || vmkit_seccomp::is_confined(),
/// )?;
/// assert!(thread.join().unwrap());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn spawn<T, R, W>(
    builder: thread::Builder,
    filter: Option<Filter>,
    refused: R,
    work: W,
) -> Result<JoinHandle<T>, SpawnError>
where
    T: Send + 'static,
    R: FnOnce() -> T + Send + 'static,
    W: FnOnce() -> T + Send + 'static,
{
    let (installed, install_result) = mpsc::sync_channel(1);
    let thread = builder
        .spawn(move || {
            if let Some(filter) = filter {
                let result = filter.install();
                let failed = result.is_err();
                let _ = installed.send(result);
                if failed {
                    return refused();
                }
            }
            drop(installed);
            work()
        })
        .map_err(SpawnError::Thread)?;
    // Without a filter the sender is dropped at once: `Err(_)` here.
    if let Ok(Err(source)) = install_result.recv() {
        let _ = thread.join();
        return Err(SpawnError::Seccomp(source));
    }
    Ok(thread)
}
