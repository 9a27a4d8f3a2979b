//! glue-node-agent: applies swarm-glue's signed address rewrites on one node.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use glue_node_agent::agent::{load_trust_dir, Agent, Identity, Setup};
use glue_node_agent::config::{self, Config};
use glue_node_agent::dockerd::{DockerSocket, DockerdWatch};
use glue_node_agent::netfilter::{self, Iptables};
use glue_node_agent::overlay::{self, DockerNetns};
use glue_node_agent::protocol::SigningKey;
use glue_node_agent::reset::Kernel;
use glue_node_agent::server;
use glue_node_agent::state::{write_atomic, Loaded, StateStore};

#[derive(Parser)]
#[command(
    version = glue_node_agent::VERSION,
    about = "Applies swarm-glue's signed address rewrites on this node"
)]
struct Cli {
    /// Configuration file (every option has a default).
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default; what the systemd unit starts).
    Run,
    /// Print what this node has in force.
    Status,
    /// Remove every rewrite rule and forget the rewrite set (keys, trust and
    /// replay counters stay). Run by the package on removal, with the agent
    /// stopped: a running agent would put a set back only when a manager
    /// sends one.
    Clear,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let explicit = cli.config.as_os_str() != config::DEFAULT_PATH;
    let result = Config::load(&cli.config, explicit)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| match cli.command.unwrap_or(Cmd::Run) {
            Cmd::Run => run(cfg),
            Cmd::Status => status(&cfg),
            Cmd::Clear => clear(&cfg),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("glue-node-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the agent's key, or makes one at first start (0600, never logged).
fn load_or_create_key(cfg: &Config) -> anyhow::Result<SigningKey> {
    let path = cfg.key_path();
    let key = match fs::read(&path) {
        Ok(bytes) => {
            SigningKey::from_pkcs8(&bytes).with_context(|| format!("{}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&cfg.state_dir)
                .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
            let key = SigningKey::generate()?;
            write_atomic(&path, key.pkcs8())?;
            tracing::info!(key = %key.public().short(), "made this agent's signing key");
            key
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let public = format!("ed25519 {}\n", key.public());
    fs::write(cfg.public_key_path(), public)
        .with_context(|| format!("writing {}", cfg.public_key_path().display()))?;
    Ok(key)
}

fn build_agent(cfg: &Config) -> anyhow::Result<Agent> {
    let key = load_or_create_key(cfg)?;
    let identity = (!cfg.node_id.is_empty() && !cfg.cluster_id.is_empty()).then(|| Identity {
        node: cfg.node_id.clone(),
        cluster: cfg.cluster_id.clone(),
    });
    if identity.is_none() {
        tracing::warn!("node_id or cluster_id missing in the config: commands are refused until a manager enrolls this node");
    }
    let setup = Setup {
        key,
        identity,
        trust_dir: cfg.trust_dir.clone(),
        ports: cfg.ports(),
        state_path: cfg.state_path(),
    };
    let (agent, loaded) = Agent::new(setup, Box::new(Iptables::new()?), Box::new(Kernel))?;
    let agent = agent
        .with_dockerd(DockerdWatch::new(Arc::new(DockerSocket {
            socket: cfg.docker_socket.clone(),
        })))
        .with_tunnels(Box::new(DockerNetns {
            dir: cfg.docker_netns_dir.clone(),
        }));
    if let Loaded::CorruptMovedTo(aside) = &loaded {
        tracing::error!(
            "state file {} was corrupt; moved it to {} and started with no rewrites",
            cfg.state_path().display(),
            aside.display()
        );
    }
    Ok(agent)
}

fn run(cfg: Config) -> anyhow::Result<()> {
    glue_node_agent::logging::init();
    let agent = Arc::new(build_agent(&cfg)?);
    let (trusted, problems) = load_trust_dir(&cfg.trust_dir);
    for p in problems {
        tracing::warn!("trust directory: {p}");
    }
    match agent.reassert() {
        Ok(true) => tracing::info!("re-applied the persisted rewrite set"),
        Ok(false) => {}
        Err(e) => tracing::error!("could not re-apply the persisted rewrite set: {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let status = agent.status();
        let line = format!(
            "listening on {}, {} trusted manager keys, generation {} with {} rewrites",
            cfg.listen,
            trusted.len(),
            status.generation,
            status.rewrites.len()
        );
        tracing::info!(key = %agent.public_key().short(), "{line}");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&line)]);

        let mut watchdog_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
        let tick = if watchdog {
            Duration::from_micros(watchdog_usec / 2).min(Duration::from_secs(cfg.reassert_interval_s.max(1)))
        } else {
            Duration::from_secs(cfg.reassert_interval_s.max(1))
        };
        let server = tokio::spawn(server::serve(listener, agent.clone()));
        let mut interval = tokio::time::interval(tick);
        // A dockerd restarted during a recovery makes its overlay tunnels
        // anew, with learning on: they are found within a second.
        let mut tunnels = tokio::time::interval(Duration::from_secs(1));
        tunnels.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let a = agent.clone();
                    match tokio::task::spawn_blocking(move || a.reassert()).await {
                        Ok(Ok(true)) => tracing::warn!("rules had changed under us (a firewall reload?); repaired"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::error!("could not keep the rules in force: {e}"),
                        Err(e) => tracing::error!("rule check failed: {e}"),
                    }
                    if watchdog {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    }
                }
                _ = tunnels.tick() => {
                    let a = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || a.keep_tunnels()).await;
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        // The rules stay: they must outlive an agent restart.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        server.abort();
        tracing::info!("stopping; the rewrite rules stay in force");
        anyhow::Ok(())
    })
}

fn clear(cfg: &Config) -> anyhow::Result<()> {
    // The empty set is persisted before the rules go, so an agent started
    // after a kill between the two never puts them back; the rules go even
    // when the state file cannot be written, and a second run finishes.
    let store = StateStore::new(cfg.state_path());
    let forgotten = store
        .load()
        .map_err(anyhow::Error::from)
        .and_then(|(state, _)| {
            if state.rewrites.is_empty() && state.pending_reset.is_empty() {
                return Ok(());
            }
            store
                .save(&glue_node_agent::state::AgentState {
                    rewrites: Vec::new(),
                    pending_reset: Vec::new(),
                    ..state
                })
                .map_err(anyhow::Error::from)
        });
    let removed = netfilter::apply(&Iptables::new()?, &[], None, &cfg.ports())?
        != netfilter::Applied::AlreadyInForce;
    let relearned = overlay::hold(
        &DockerNetns {
            dir: cfg.docker_netns_dir.clone(),
        },
        true,
    );
    forgotten?;
    println!(
        "glue-node-agent: {}",
        if removed {
            "rewrite rules removed"
        } else {
            "no rewrite rule was in force"
        }
    );
    if !relearned.changed.is_empty() {
        println!(
            "glue-node-agent: learning on again on {} overlay tunnels",
            relearned.changed.len()
        );
    }
    if let Some(e) = relearned.errors.first() {
        anyhow::bail!("overlay tunnels: {e}");
    }
    Ok(())
}

/// Reads only: creates no key, moves no file, changes no rule.
/// The status lines for the overlay tunnels and what dockerd holds.
fn print_overlay_and_dockerd(cfg: &Config) {
    let (tunnels, errors) = overlay::Tunnels::list(&DockerNetns {
        dir: cfg.docker_netns_dir.clone(),
    });
    let off = tunnels.iter().filter(|t| !t.learning).count();
    println!(
        "  overlay     {} tunnels, {off} with learning off (kept so while rewrites are in force)",
        tunnels.len()
    );
    for e in errors {
        println!("  overlay     not read: {e}");
    }
    let d = DockerdWatch::read_now(&DockerSocket {
        socket: cfg.docker_socket.clone(),
    });
    match d.error {
        Some(e) => println!("  dockerd     not read: {e}"),
        None => {
            let pinned: Vec<String> = d.state.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "  dockerd     node address {}; state file: {}",
                if d.node_addr.is_empty() {
                    "none (not in a swarm)"
                } else {
                    &d.node_addr
                },
                if pinned.is_empty() {
                    "no address set".to_string()
                } else {
                    pinned.join(" ")
                }
            );
        }
    }
}

fn status(cfg: &Config) -> anyhow::Result<()> {
    println!("glue-node-agent {}", glue_node_agent::VERSION);
    let node = if cfg.node_id.is_empty() {
        "(not enrolled)"
    } else {
        &cfg.node_id
    };
    println!("  node        {node}");
    let key = match fs::read_to_string(cfg.public_key_path()) {
        Ok(text) => text.split_whitespace().nth(1).unwrap_or("?").to_string(),
        Err(_) => format!(
            "none yet ({} appears at first start)",
            cfg.public_key_path().display()
        ),
    };
    println!("  key         {key}");
    let (trusted, problems) = load_trust_dir(&cfg.trust_dir);
    println!(
        "  trusted     {} manager keys in {}",
        trusted.len(),
        cfg.trust_dir.display()
    );
    for p in problems {
        println!("  trust       problem: {p}");
    }
    let state = StateStore::new(cfg.state_path()).peek()?;
    println!("  generation  {}", state.generation);
    let in_force = netfilter::in_force(&Iptables::new()?, &state.rewrites, &cfg.ports())?;
    println!(
        "  in force    {}",
        if in_force {
            "yes"
        } else {
            "NO (the running agent repairs this)"
        }
    );
    if !state.pending_reset.is_empty() {
        println!(
            "  pending     connections to {:?} still to be reset",
            state.pending_reset
        );
    }
    if state.rewrites.is_empty() {
        println!("  rewrites    none");
    }
    for r in &state.rewrites {
        println!("  rewrite     {} -> {}", r.from, r.to);
    }
    print_overlay_and_dockerd(cfg);
    Ok(())
}
