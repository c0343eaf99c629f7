//! Closing what holds the storage, one module per kind of device, each holding its kind's
//! kernel quirks (the shape of systemd's `src/shutdown/detach-*.c`): the runtime makes one
//! bounded call per step ([`dm::close`], [`md::stop`], [`loopdev::detach`],
//! [`nbd::disconnect`], [`iscsi::logout`], [`swap::swapoff`]) and reports what it came to.
//!
//! These functions block in the kernel and run in the runtime's forked workers; none of
//! them depends on the runtime. Their retry loops are short ([`devnode::retry_for`]), and
//! the runtime feeds the watchdog while it waits for the worker.

pub mod devnode;
pub mod dm;
pub mod iscsi;
pub mod loopdev;
pub mod md;
pub mod nbd;
pub mod swap;

/// What closing a device came to, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Closed by our request.
    Done,
    /// Already gone: the kernel removed it by itself (deferred removal, its last user
    /// closing it) before or while we asked.
    Gone,
    /// Closed by our request, but without the goodbye its protocol has, for the reason
    /// given: an iSCSI session torn down without a logout because the target did not
    /// answer. Nothing was lost (nothing used the device), but the server was not told.
    Dropped(String),
}
