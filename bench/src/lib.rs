//! The benchmark suite behind `make bench` (binary `sidetrace-bench`).
//!
//! Model: every system under test is a separate process pinned with `taskset` to the "SUT"
//! CPU together with the upstream app (so "one vCPU shared with the upstream" is literal),
//! while this process (load generator, pacer thread) and the span sink run on the other CPU.
//! Targets are measured side by side in one run, in interleaved rounds (the order rotates every
//! round), and every table reports the median across rounds with the min–max spread. Timings
//! are figures for a human to read, never pass/fail checks: the only tests are unit tests of
//! the pure helpers in [`stats`] and the config generators. [`published`] holds linkerd2-proxy's
//! published figures (cited) and puts this run's ratios to Envoy next to theirs.
//!
//! Subcommands: `all` (quick profile by default, `--full` for the long one), `http`, `memory`,
//! `export`, `h2`, `webhook`, `profile` (per-request instructions, allocations and syscalls,
//! counted under valgrind and strace: [`profile`]); hidden `upstream`, `relay`, `sink` run the peers. Two more
//! binaries need root and peers (feature `operator`): `sidetrace-bench-operator` (1,000
//! TracedServices against a real apiserver) and `sidetrace-bench-netns` (the transparent path
//! through iptables and network-namespace pods).

pub mod envoy;
pub mod load;
pub mod procs;
pub mod profile;
pub mod published;
pub mod scenarios;
pub mod servers;
pub mod stats;
