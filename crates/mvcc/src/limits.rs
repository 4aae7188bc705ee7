//! Named limits of the key-value API. The server exposes the tunable ones as flags.

/// etcd's default `--max-txn-ops`: operations in one branch of a Txn.
pub const TXN_OPS_MAX_DEFAULT: usize = 128;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 1536 * 1024;

/// Depth of nested Txns accepted. etcd bounds nesting only by the op budget; a
/// fixed depth keeps validation and apply recursion bounded on any input.
pub const TXN_NESTING_MAX: usize = 64;

/// The revision of an empty store: etcd starts at 1, and the first write gets 2.
pub const REVISION_INITIAL: i64 = 1;

/// The compacted revision of a store that was never compacted.
pub const COMPACT_REVISION_NONE: i64 = -1;

/// etcd's largest lease TTL, in seconds.
pub const LEASE_TTL_MAX_SECONDS: i64 = 9_000_000_000;

/// Pages of the key space kept in the engine's own cache (redb's default is
/// 1 GiB, which a member would grow into): reads beyond it go through the OS
/// page cache, which does not count against the process.
pub const CACHE_BYTES_DEFAULT: usize = 128 * 1024 * 1024;

/// Longest an apply transaction stays open across batches while nothing
/// reads (etcd's backend commit interval is the same 100 ms). A read commits
/// it at once; Raft's log, not the engine, is what makes a write durable.
/// Committing per apply cost a redb commit for every ~20 puts; leaving it
/// open raised put 1x1 on 3 members from 1,173–1,325 to 1,364–1,475
/// puts/s (docs/BENCHMARKS.md).
pub const APPLY_OPEN_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Most commands an apply transaction takes across batches before it
/// commits (etcd's backend batch limit is the same 10,000).
pub const APPLY_OPEN_COMMANDS_MAX: usize = 10_000;
