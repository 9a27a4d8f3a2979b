//! The real [`Discovery`]: this manager announced through avahi-daemon over
//! D-Bus, the others browsed, hosts resolved. Follows the daemon: a
//! restarted avahi-daemon has forgotten the entry group and the browser, so
//! both are made again.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::discovery::{Announcement, Avahi, DiscoveryError, Event, Published};
use crate::memory::Memory;
use crate::ports::Discovery;

pub struct Mdns {
    avahi: Option<Avahi>,
    published: Option<(Announcement, zbus::zvariant::OwnedObjectPath)>,
    publish_events: Option<mpsc::Receiver<Published>>,
    /// Raised on each name collision: published as "swarm-glue ID #n".
    name_suffix: u32,
    heard_tx: mpsc::Sender<Event>,
    agent_port: u16,
}

impl Mdns {
    /// Announcements and Avahi's comings and goings arrive on the receiver.
    pub fn new(agent_port: u16) -> (Mdns, mpsc::Receiver<Event>) {
        let (heard_tx, heard_rx) = mpsc::channel(64);
        let mdns = Mdns {
            avahi: None,
            published: None,
            publish_events: None,
            name_suffix: 0,
            heard_tx,
            agent_port,
        };
        (mdns, heard_rx)
    }

    /// The avahi-daemon published with is gone (`restarted`: another one
    /// owns its bus name already).
    fn gone(&mut self, restarted: bool) {
        if restarted {
            tracing::warn!("avahi-daemon restarted; browsing and announcing again");
        } else {
            tracing::warn!("avahi-daemon stopped; announcing again when it is back");
        }
        self.lost();
    }

    /// Connects and browses, unless connected to the daemon that runs now.
    async fn connect(&mut self) -> Result<(), DiscoveryError> {
        // The owner is also compared here, not only followed by its signal:
        // a restart between connecting and subscribing sends no signal this
        // connection hears.
        if let Some(avahi) = &self.avahi {
            let now = avahi.owner_now().await;
            if now.as_deref() != Some(avahi.owner()) {
                self.gone(now.is_some());
            }
        }
        if self.avahi.is_none() {
            let avahi = Avahi::connect().await?;
            avahi.watch_owner(self.heard_tx.clone()).await?;
            avahi.browse(self.heard_tx.clone()).await?;
            self.avahi = Some(avahi);
            self.published = None;
        }
        Ok(())
    }

    /// Takes in what Avahi said of the entry published last.
    fn publish_events(&mut self) {
        let Some(rx) = &mut self.publish_events else {
            return;
        };
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Published::Established => {}
                Published::Collision => {
                    self.name_suffix += 1;
                    tracing::warn!("the mDNS name of this manager collides with another host's; publishing under another");
                    self.published = None;
                }
                Published::Failed(e) => {
                    tracing::warn!("publishing over mDNS failed ({e}); publishing again");
                    self.published = None;
                }
            }
        }
    }
}

#[async_trait]
impl Discovery for Mdns {
    async fn announce(
        &mut self,
        memory: &Memory,
        addrs: Vec<Ipv4Addr>,
    ) -> Result<(), DiscoveryError> {
        self.connect().await?;
        self.publish_events();
        let ann = Announcement {
            cluster: memory.cluster_id.clone(),
            node: memory.node_id.clone(),
            addrs,
            agent_port: self.agent_port,
        };
        if ann.addrs.is_empty() || self.published.as_ref().map(|(a, _)| a) == Some(&ann) {
            return Ok(());
        }
        let Some(avahi) = &self.avahi else {
            return Ok(());
        };
        if let Some((_, path)) = self.published.take() {
            let _ = avahi.withdraw(path).await;
        }
        let mut name = format!("swarm-glue {}", crate::docker::short(&memory.node_id));
        if self.name_suffix > 0 {
            name.push_str(&format!(" #{}", self.name_suffix + 1));
        }
        match avahi.publish(&name, &ann).await {
            Ok((path, events)) => {
                let at: Vec<String> = ann.addrs.iter().map(ToString::to_string).collect();
                tracing::info!("announcing this manager over mDNS at {}", at.join(", "));
                self.published = Some((ann, path));
                self.publish_events = Some(events);
                Ok(())
            }
            Err(e) => {
                self.avahi = None;
                Err(e)
            }
        }
    }

    fn lost(&mut self) {
        self.avahi = None;
        self.published = None;
        self.publish_events = None;
    }

    fn owner_changed(&mut self, old: &str, new: &str) -> bool {
        // The watcher of an earlier connection may still tell of a change
        // already dealt with: only the loss of the daemon published with
        // counts.
        let gone = self.avahi.as_ref().is_some_and(|a| a.owner() == old);
        if gone {
            self.gone(!new.is_empty());
        }
        // A round at once: it connects to the new daemon.
        !new.is_empty() && (gone || self.avahi.is_none())
    }

    fn refresh(&self) {
        if let Some(avahi) = &self.avahi {
            avahi.refresh(&self.heard_tx);
        }
    }

    async fn resolve(&self, hostname: &str) -> Result<Ipv4Addr, DiscoveryError> {
        match &self.avahi {
            Some(avahi) => avahi.resolve_host(hostname).await,
            None => Err(DiscoveryError::Avahi(format!(
                "not connected; {hostname}.local not resolved"
            ))),
        }
    }
}
