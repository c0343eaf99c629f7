//! exitrd as a library: the pure core (topology, plan), the kernel interfaces (teardown),
//! the PID-1 runtime and the boot-time payload code. The binary in main.rs is a thin
//! dispatcher over these; tests and benchmarks use them directly.

pub mod buildid;
pub mod cli;
pub mod config;
#[cfg(test)]
pub(crate) mod fixture;
pub mod hookcheck;
pub mod initrd;
pub mod netroot;
pub mod payload;
pub mod plan;
pub mod record;
pub mod runtime;
pub mod status;
pub mod teardown;
pub mod topology;
