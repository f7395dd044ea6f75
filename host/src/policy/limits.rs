//! The budget of one decision. A policy that exceeds any of these is stopped and denied.

use std::time::Duration;

/// Instructions, roughly: a Rust decision uses thousands, a Python one about a hundred thousand
/// plus its start-up; an infinite loop reaches this in well under a second.
pub const FUEL: u64 = 4_000_000_000;
/// Wall-clock backstop, counted in epoch ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
pub const DEADLINE: Duration = Duration::from_secs(5);

/// [`DEADLINE`] in epoch ticks, from now.
pub fn deadline_ticks() -> u64 {
    (DEADLINE.as_millis() / EPOCH_TICK.as_millis()) as u64
}
/// Linear memory across all of a decision's memories. Python's runtime needs about 12 MiB.
pub const MEMORY_BYTES: usize = 256 << 20;
pub const TABLE_ELEMENTS: usize = 1 << 20;
pub const INSTANCES: usize = 64;
/// Native stack the guest may use; deep recursion traps at this depth.
pub const WASM_STACK_BYTES: usize = 1 << 20;
/// What the guest can say: reasons, exports, log lines, captured stdout and stderr.
pub const MAX_REASONS: usize = 64;
pub const MAX_TEXT_BYTES: usize = 4096;
pub const MAX_EXPORTS: usize = 16;
/// Deletions one retention answer may name: one per catalog entry it was shown, at most.
pub const MAX_DELETIONS: usize = 4096;
/// Pre-dump rounds one plan may ask for.
pub const MAX_PRE_DUMP_ROUNDS: u32 = 16;
pub const MAX_LOG_LINES: usize = 256;
pub const MAX_LOG_BYTES: usize = 64 << 10;
pub const MAX_CAPTURED_OUTPUT: usize = 64 << 10;
/// The most bytes a policy may hand the host in one call (wasmtime's hostcall fuel, 128 MiB by
/// default): room for the largest legal answer, a retainer's [`MAX_DELETIONS`] deletions with
/// reasons of [`MAX_TEXT_BYTES`], and a mebibyte more. Past it the call traps, which is a denial.
pub const HOSTCALL_BYTES: usize = MAX_DELETIONS * (MAX_TEXT_BYTES + 256) + (1 << 20);
/// A component file: Python's runtime makes policies of about 20 MiB.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// The JSON Schema of a policy's settings, from describe.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// Instances that may exist at once across the process: a daemon's parallel checkpoints, each
/// deciding with one component at a time, the spares made ahead of decisions, and used ones
/// waiting to be dropped.
pub const CONCURRENT_COMPONENTS: u32 = 48;

/// The pooling allocator's limits, from the per-decision budget above: a component that needs
/// more than a slot gives fails to instantiate, which is a denial like any other failure.
pub fn pools() -> wasmtime::InstanceAllocationStrategy {
    let mut pools = wasmtime::PoolingAllocationConfig::new();
    pools
        .total_component_instances(CONCURRENT_COMPONENTS)
        .total_core_instances(CONCURRENT_COMPONENTS * 16)
        .total_memories(CONCURRENT_COMPONENTS * 4)
        .total_tables(CONCURRENT_COMPONENTS * 16)
        .max_memories_per_component(INSTANCES as u32)
        .max_tables_per_component(INSTANCES as u32)
        .max_core_instances_per_component(INSTANCES as u32)
        .max_tables_per_module(4)
        .max_memory_size(MEMORY_BYTES)
        .table_elements(POOLED_TABLE_ELEMENTS)
        // Decisions run on the host's own stack (nothing is async), so the pool needs no fiber
        // stacks. Its default of 1000, each with a guard page made by an mprotect of its own
        // (2000 mappings), took about a fifth of a one-shot command's CPU to make, and more
        // to tear down at its exit.
        .total_stacks(0)
        // Reset by memset, not madvise: a small policy's next decision then takes no page
        // faults and no TLB shootdown on the memory its last one touched.
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_BYTES / 16)
        // Where the kernel has PAGEMAP_SCAN (6.7 and later), only the pages a decision wrote
        // are reset. Python's and JavaScript's runtimes write megabytes: their decisions were
        // about halved (p50 1.4 to 0.8 ms, with and without, alternating), most likely
        // because the reset of the last store, which runs beside the next decision, no longer
        // madvises memory away from under it (TLB shootdowns) for it to fault back in.
        .pagemap_scan(wasmtime::Enabled::Auto);
    wasmtime::InstanceAllocationStrategy::Pooling(pools)
}

/// What a Rust policy's decision touches: its stack, its data and the facts.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// A pooled table's size: Python's and JavaScript's runtimes have tables of some thousands.
const POOLED_TABLE_ELEMENTS: usize = 64 << 10;

/// A policy asked for more memory or a larger table than its limits allow: the error the
/// limiter returns, which the engine recognises by type when it names what the policy did.
#[derive(Debug, thiserror::Error)]
pub enum OverLimit {
    #[error("policy tried to grow its memory to {total} bytes, over the limit of {MEMORY_BYTES} bytes")]
    Memory { total: usize },
    #[error("policy tried to grow a table to {desired} elements, over the limit of {TABLE_ELEMENTS}")]
    Table { desired: usize },
}

/// Caps the total of all linear memories, which per-memory limits alone do not.
#[derive(Debug, Default)]
pub struct TotalMemoryLimiter {
    pub total: usize,
    pub peak: usize,
}

impl wasmtime::ResourceLimiter for TotalMemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.total - current.min(self.total) + desired;
        if total > MEMORY_BYTES {
            return Err(OverLimit::Memory { total }.into());
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > TABLE_ELEMENTS {
            return Err(OverLimit::Table { desired }.into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        INSTANCES
    }
    fn tables(&self) -> usize {
        INSTANCES
    }
    fn memories(&self) -> usize {
        INSTANCES
    }
}

/// `text`, cut at a character boundary to at most [`MAX_TEXT_BYTES`] and marked with `…` when it
/// was longer: what a policy writes is bounded by cutting, never by failing its decision.
pub fn cut(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
