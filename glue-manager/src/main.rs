//! glue-manager: keeps a Docker Swarm alive when its hosts move to another network.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use glue_manager::config::{self, Config};
use glue_manager::daemon::Daemon;
use glue_manager::memory::MemoryStore;
use glue_manager::status::{self, StatusReport};

#[derive(Parser)]
#[command(
    version = glue_protocol::PROGRAM_VERSION,
    about = "Keeps a Docker Swarm alive when its hosts move to another network",
    after_help = config::OPTIONS_HELP
)]
struct Cli {
    /// Configuration file (every option has a default) [default:
    /// $SWARM_GLUE_CONFIG, else /etc/swarm-glue/manager.toml]. A file named
    /// here must exist; the default one may be absent.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the manager (the default; what the systemd unit starts).
    Run,
    /// Print the swarm as remembered, each node's SSH and agent state, what is
    /// pending and the last errors. Reads only.
    Status {
        /// The daemon's report as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Check that ADDR (host:port of a raft endpoint) is manager NODE of the
    /// remembered swarm: TLS certificate chaining to the remembered root CA,
    /// for that node ID and cluster. Changes nothing.
    ProveManager {
        addr: std::net::SocketAddr,
        node: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .or_else(|| std::env::var_os(config::CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let result = Config::load(&path, explicit)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| match cli.command.unwrap_or(Cmd::Run) {
            Cmd::Run => run(cfg),
            Cmd::Status { json } => show_status(&cfg, json),
            Cmd::ProveManager { addr, node } => prove_manager(&cfg, addr, node),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("glue-manager: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<()> {
    glue_protocol::logging::init();
    tracing::info!(
        version = glue_protocol::PROGRAM_VERSION,
        "glue-manager starting (state in {})",
        cfg.state_dir.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { Daemon::new(cfg)?.run().await })
}

fn show_status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let report: Option<StatusReport> = match std::fs::read(cfg.status_path()) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cfg.status_path().display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("{}: {e}", cfg.status_path().display()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let memory = MemoryStore::new(cfg.memory_path()).peek()?;
    let running = report.as_ref().is_some_and(|r| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(r.pid as i32), None).is_ok()
    });
    print!(
        "{}",
        status::render(
            memory.as_ref(),
            report.as_ref(),
            running,
            glue_protocol::clock::unix_now()
        )
    );
    Ok(())
}

fn prove_manager(cfg: &Config, addr: std::net::SocketAddr, node: String) -> anyhow::Result<()> {
    let memory = MemoryStore::new(cfg.memory_path()).peek()?.ok_or_else(|| {
        anyhow::anyhow!("{}: nothing remembered yet", cfg.memory_path().display())
    })?;
    let expected = glue_manager::identity::Expected {
        root_ca_pem: memory.root_ca_pem,
        cluster: memory.cluster_id,
        node,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let subject = rt.block_on(glue_manager::identity::prove_manager(
        addr,
        &expected,
        std::time::Duration::from_secs(5),
    ))?;
    println!(
        "{addr} is manager {} of cluster {} ({})",
        subject.cn, subject.o, subject.ou
    );
    Ok(())
}
