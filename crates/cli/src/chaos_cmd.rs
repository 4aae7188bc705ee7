//! `fivefold chaos`: faults for a running `fivefold up`, from another terminal.
//! Each command goes to `up`'s control port; `up` applies the fault where its
//! members run (loopback fault rules, or blackhole routes between network
//! namespaces), measures RTO and RPO with a write probe, and prints them in
//! both terminals.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::up::{control_port, send_control, DEFAULT_BASE_PORT};

/// How long `drill` keeps the city cut after writes resumed.
const DRILL_CUT_AFTER_RECOVERY: Duration = Duration::from_secs(1);

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// Show each member (city, role, revision), the WAN and what is cut.
    Status(Target),
    /// Cut a city off (every link to the other cities, both ways); prints the RTO.
    Cut(CityArgs),
    /// Restore every link; prints the RPO of the cut (acknowledged writes lost).
    Heal(Target),
    /// Cut a city, wait until writes resume, heal: RTO and RPO in one go.
    Drill(CityArgs),
}

#[derive(Args, Clone)]
pub struct Target {
    /// The --base-port `fivefold up` was started with.
    #[arg(long, default_value_t = DEFAULT_BASE_PORT, value_parser = clap::value_parser!(u16).range(1..=crate::up::BASE_PORT_MAX))]
    pub base_port: u16,
}

#[derive(Args, Clone)]
pub struct CityArgs {
    /// hangzhou, shanghai or shenzhen.
    pub city: String,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(command: ChaosCommand) -> anyhow::Result<()> {
    match command {
        ChaosCommand::Status(target) => send_control(control_port(target.base_port), "status").await,
        ChaosCommand::Cut(args) => {
            send_control(control_port(args.target.base_port), &format!("cut {}", args.city)).await
        }
        ChaosCommand::Heal(target) => send_control(control_port(target.base_port), "heal").await,
        ChaosCommand::Drill(args) => {
            let port = control_port(args.target.base_port);
            send_control(port, &format!("cut {}", args.city)).await?;
            tokio::time::sleep(DRILL_CUT_AFTER_RECOVERY).await;
            send_control(port, "heal").await
        }
    }
}
