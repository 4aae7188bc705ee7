use etcd_proto::etcdserverpb::PutRequest;
use etcd_proto::fivefoldpb::{command, Command};
use std::time::Instant;
fn main() {
    let dir = std::env::temp_dir().join(format!("apply-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = mvcc::MvccStore::open(&dir.join("db")).unwrap();
    let per: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(24);
    let total = 200_000usize;
    let mut x: u64 = 12345;
    let started = Instant::now();
    let mut n = 0;
    let mut commit_ns = 0u128;
    while n < total {
        let mut batch = store.begin_apply().unwrap();
        for _ in 0..per {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("{:08}", x % 100_000).into_bytes();
            let cmd = Command {
                kind: Some(command::Kind::Put(PutRequest {
                    key,
                    value: vec![7u8; 256],
                    ..Default::default()
                })),
            };
            batch.apply(&cmd).unwrap();
            n += 1;
        }
        batch.put_meta("ext/raft_applied", &[1u8; 24]).unwrap();
        let t = Instant::now();
        batch.commit(false).unwrap();
        commit_ns += t.elapsed().as_nanos();
    }
    let el = started.elapsed();
    println!(
        "{} puts in batches of {}: {:.2} us/put, commit {:.2} us/put",
        total,
        per,
        el.as_secs_f64() * 1e6 / total as f64,
        commit_ns as f64 / 1e3 / total as f64
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
