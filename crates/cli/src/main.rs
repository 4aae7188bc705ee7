//! The `fivefold` binary: clap subcommands over the library crates. Only this
//! crate reads flags and the environment; everything below takes a config.

mod bench_cmd;
mod bench_wan;
mod chaos_cmd;
mod gateway_cmd;
mod ldc_cmd;
mod registry_cmd;
mod snapshot_cmd;
mod store_cmd;
mod up;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a member allocates and frees per
/// request on every thread, where glibc's arenas cost about a tenth of its
/// CPU (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fivefold",
    version,
    about = "A financial-grade platform: an etcd-compatible store replicated over five data centers in three cities"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `debug,openraft=info`.
    #[arg(long, global = true, env = "FIVEFOLD_LOG", default_value = "info,openraft=warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one store member (etcd v3 API). Flags follow etcd's names.
    Store(Box<store_cmd::StoreArgs>),
    /// Start a local five-member, three-city deployment on loopback.
    Up(up::UpArgs),
    /// Load-test etcd v3 endpoints (fivefold or etcd) with etcd's benchmark workloads.
    Bench(Box<bench_cmd::BenchArgs>),
    /// Faults for a `fivefold up` deployment: cut a city off, heal, drill (RPO/RTO).
    #[command(subcommand)]
    Chaos(chaos_cmd::ChaosCommand),
    /// The unit topology: validate, publish (apply) and show units and where they are served.
    #[command(subcommand)]
    Topology(ldc_cmd::TopologyCommand),
    /// Move a unit, or every unit served from a city, to another dc (epoch + 1).
    #[command(subcommand)]
    Failover(ldc_cmd::FailoverCommand),
    /// Move units back to their home dc (epoch + 1 each).
    Failback(ldc_cmd::FailbackArgs),
    /// The unit-routing gateway (serve), and publishing its routes.
    #[command(subcommand)]
    Gateway(gateway_cmd::GatewayCommand),
    /// Sample services (the account service each unit runs).
    #[command(subcommand)]
    Sample(gateway_cmd::SampleCommand),
    /// Service registry: the HTTP/JSON server, and registering an instance from a shell.
    #[command(subcommand)]
    Registry(registry_cmd::RegistryCommand),
    /// Snapshot tools (restore a snapshot into a new member's data dir).
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
}

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The chain of causes, not a backtrace: errors say what to do.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process (and what it starts).
///
/// mimalloc asks for huge pages on its arenas and returns memory it has not
/// used for a while to the kernel; the next touch then faults in a whole
/// 2 MiB page, which the kernel zeroes. Under `fivefold bench put --clients
/// 100 --conns 10` that zeroing (`clear_page_erms`) was 10.7% of the
/// members' samples in a flat profile, 13.7% in a call-graph one.
/// Alternating runs on 3 members, huge pages on → off:
/// 1000x100 puts 15,645–17,892 → 18,846–20,748/s, p99 120–284 → 104–111 ms;
/// 1x1 p99 1.44–1.92 → 1.07–1.25 ms (docs/BENCHMARKS.md). Failing to set it
/// only costs that speed, so an error is ignored.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Store(args) => store_cmd::run(*args).await,
            Command::Up(args) => up::run(args).await,
            Command::Snapshot(command) => snapshot_cmd::run(command),
            Command::Bench(args) => bench_cmd::run(*args).await,
            Command::Chaos(command) => chaos_cmd::run(command).await,
            Command::Topology(command) => ldc_cmd::run_topology(command).await,
            Command::Failover(command) => ldc_cmd::run_failover(command).await,
            Command::Failback(args) => ldc_cmd::run_failback(args).await,
            Command::Gateway(command) => gateway_cmd::run_gateway(command).await,
            Command::Sample(command) => gateway_cmd::run_sample(command).await,
            Command::Registry(command) => registry_cmd::run(command).await,
        }
    })
}
