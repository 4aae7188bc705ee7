//! `fivefold snapshot restore`: turns a snapshot (from `etcdctl snapshot save`
//! against fivefold) into the data dir of a member of a new cluster. Every
//! member of the new cluster restores the same file; then each starts with
//! `fivefold store` and the same `--initial-cluster`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Write a new member's data dir from a snapshot file.
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// The data dir to create; it must not exist yet.
    #[arg(long)]
    pub data_dir: PathBuf,
}

pub fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Restore(args) => restore(args),
    }
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    if args.data_dir.exists() {
        bail!("{} exists; restore writes a new data dir, pick another path", args.data_dir.display());
    }
    let file = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let result = (|| -> anyhow::Result<(i64, u64)> {
        let mvcc = mvcc::MvccStore::open(&args.data_dir.join("mvcc.redb"))?;
        let summary = mvcc.install_snapshot(mvcc::snapshot::unseal(&file)?)?;
        mvcc.forget_cluster()?;
        Ok((mvcc.revision(), summary.rows))
    })();
    match result {
        Ok((revision, rows)) => {
            println!(
                "restored {} ({rows} stored versions, revision {revision}) into {}",
                args.file.display(),
                args.data_dir.display()
            );
            println!(
                "start the member with: fivefold store --data-dir {} --initial-cluster ...",
                args.data_dir.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&args.data_dir);
            Err(e.context(format!("restoring {}", args.file.display())))
        }
    }
}
