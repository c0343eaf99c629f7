"""The VM harness for exitrd (see tests/vm/README.md). Run it from the repository root as
`python3 -m tests.vm COMMAND` (run, suite, demo, list, recheck, rootfs).

Modules, in the order they build on each other:
  common     paths, the cache folder, printing, commands, cache-key hashing, timings
  scenarios  the Scenario type, every scenario's declaration, pinned log lines
  logs       reading serial logs (timestamps, harness lines, inventory, line patterns)
  qemu       booting a guest (BootSpec, VM slots, NBD roots, emulator-fault repeat, disks)
  checks     what a test boot, a check boot and a control run must show
  stages     the cached stages: rootfs, base, pkg, live medium, dracut; the .deb
  runner     one scenario's run, its report, and the parallel suite
  __main__   the command line
"""
