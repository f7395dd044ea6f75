//! Checkpoint and restore with real runc and CRIU: every option, the rejected combinations,
//! the failure paths (the container keeps running, nothing is published) and hostile archives.

mod support;

use std::time::Duration;

use support::{Ckpt, eventually, last_count};

#[test]
fn checkpoint_then_restore_carries_memory_state_on() {
    let ckpt = Ckpt::new();
    ckpt.counter("web", &[]);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web")) >= 3));
    assert_eq!(ckpt.ok(&["checkpoint", "web"]), "web\n");
    let info = ckpt.inspect("web");
    assert_eq!(info["State"]["Status"], "exited");
    assert_eq!(info["State"]["Checkpointed"], true);
    let at_checkpoint = last_count(&ckpt.logs("web"));
    assert_eq!(ckpt.ok(&["restore", "web"]), "web\n");
    let info = ckpt.inspect("web");
    assert_eq!(info["State"]["Status"], "running");
    assert_eq!(info["State"]["Restored"], true);
    assert_eq!(info["State"]["Checkpointed"], false);
    assert!(eventually(Duration::from_secs(5), || last_count(&ckpt.logs("web")) > at_checkpoint + 2));
    let logs = ckpt.logs("web");
    let counts: Vec<u64> = logs.lines().filter_map(|l| l.strip_prefix("count ")?.parse().ok()).collect();
    assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "the counter went on from where it was: {counts:?}");
    let again = ckpt.fails(&["restore", "web"]);
    assert!(again.contains("is running"), "{again}");
}
