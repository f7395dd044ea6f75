//! The integration tests: one binary that drives the real `ckpt`, runc, CRIU and real
//! WebAssembly components. Without root, runc or CRIU each test says it is skipped (on the
//! terminal, not in captured output) and passes; with `CKPT_REQUIRE_INTEGRATION=1`, as
//! `scripts/test` and CI set it, a missing piece fails instead, so nothing is skipped there.

mod support;

mod checkpoint;
mod containers;
mod demo;
mod engines;
mod faults;
mod hostile;
mod interop;
mod invariants;
mod migrate;
mod networks;
mod podman_habits;
mod policy;
mod registry;
mod schedules;
mod sealing;
