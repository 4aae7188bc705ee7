//! The engine's write path alone, no Raft and no network: puts of 256-byte
//! values on random keys of a 100,000-key space, applied in batches of N
//! commands per redb transaction (what one state-machine apply does), with a
//! durable commit once a second as the store makes one.
//!
//!     cargo run --release -p mvcc --example apply_speed -- 24
//!
//! Prints the CPU-bound cost per put and the part of it spent committing.

use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::PutRequest;
use etcd_proto::fivefoldpb::{command, Command};

const PUTS: usize = 200_000;
const KEY_SPACE: u64 = 100_000;
const VALUE_BYTES: usize = 256;
const DURABLE_EVERY: Duration = Duration::from_secs(1);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let per_batch: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| format!("batch size must be a number, got {arg:?}"))?,
        None => 24,
    };
    if per_batch == 0 {
        return Err("batch size must be at least 1".into());
    }
    let dir = tempfile::tempdir()?;
    let store = mvcc::MvccStore::open(&dir.path().join("db"))?;
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut random_key = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        format!("{:08}", state % KEY_SPACE).into_bytes()
    };
    let started = Instant::now();
    let mut last_durable = Instant::now();
    let mut committing = Duration::ZERO;
    let mut applied = 0;
    while applied < PUTS {
        let mut batch = store.begin_apply()?;
        let commands: Vec<Command> = (0..per_batch)
            .map(|_| {
                let put = PutRequest { key: random_key(), value: vec![7; VALUE_BYTES], ..Default::default() };
                Command { kind: Some(command::Kind::Put(put)) }
            })
            .collect();
        batch.apply_all(&commands)?;
        applied += per_batch;
        batch.put_meta("ext/applied", &applied.to_be_bytes())?;
        let durable = last_durable.elapsed() >= DURABLE_EVERY;
        let commit_started = Instant::now();
        batch.commit(durable)?;
        committing += commit_started.elapsed();
        if durable {
            last_durable = Instant::now();
        }
    }
    let per_put = |d: Duration| d.as_secs_f64() * 1e6 / applied as f64;
    println!(
        "{applied} puts in batches of {per_batch}: {:.2} µs per put, of which committing {:.2} µs",
        per_put(started.elapsed()),
        per_put(committing)
    );
    Ok(())
}
