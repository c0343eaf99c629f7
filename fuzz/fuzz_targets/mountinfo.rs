#![no_main]
//! The mountinfo parser must never panic, and everything it accepts must plan without
//! panicking either (the planner runs as PID 1 on whatever the kernel prints).

use exitrd::plan::{plan, PlanOptions};
use exitrd::topology::{mountinfo, swaps, Topology};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = mountinfo::parse(&text);
    let (mounts, _) = mountinfo::parse_lenient(&text);
    let topo = Topology {
        mounts,
        swaps: swaps::parse(&text),
        ..Topology::default()
    };
    let _ = plan(&topo, &PlanOptions::shutdown());
    let _ = plan(&topo, &PlanOptions::live());
});
