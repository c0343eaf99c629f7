#![no_main]
//! The mountinfo parser must never panic, and everything it accepts must plan without
//! panicking either (the planner runs as PID 1 on whatever the kernel prints).

use exitrd::plan::{plan, PlanOptions};
use exitrd::topology::{mountinfo, swaps, Topology};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw bytes: mount points need not be UTF-8, and the parser takes them as they are.
    let text = String::from_utf8_lossy(data);
    let _ = mountinfo::parse(data);
    let (mounts, _) = mountinfo::parse_lenient(data);
    let topo = Topology {
        mounts,
        swaps: swaps::parse(&text),
        ..Topology::default()
    };
    let _ = plan(&topo, &PlanOptions::shutdown());
    let _ = plan(&topo, &PlanOptions::live());
});
