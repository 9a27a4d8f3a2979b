//! Discovery over Avahi's D-Bus API: each manager publishes a DNS-SD service
//! with what it is (cluster, node, its swarm addresses), browses for the
//! others and resolves them; workers are found by `<hostname>.local`.
//!
//! An announcement is a hint, never a proof (RFC 6762 §21: anyone on the
//! link can answer); [`crate::identity`] proves an address before it is used.
//! Browsers and resolvers use Avahi 0.8's race-free calls: prepare the
//! object, subscribe to its signals, then start it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::zvariant::OwnedObjectPath;

pub const SERVICE_TYPE: &str = "_swarm-glue._tcp";
const IF_UNSPEC: i32 = -1;
const PROTO_INET: i32 = 0;
const AVAHI_NAME: &str = "org.freedesktop.Avahi";
/// AVAHI_LOOKUP_RESULT_OUR_OWN: published by this very avahi-daemon.
const LOOKUP_RESULT_OUR_OWN: u32 = 16;

#[zbus::proxy(
    interface = "org.freedesktop.Avahi.Server",
    default_service = "org.freedesktop.Avahi",
    default_path = "/"
)]
trait Server {
    fn get_version_string(&self) -> zbus::Result<String>;
    fn entry_group_new(&self) -> zbus::Result<OwnedObjectPath>;
    fn resolve_host_name(
        &self,
        interface: i32,
        protocol: i32,
        name: &str,
        aprotocol: i32,
        flags: u32,
    ) -> zbus::Result<(i32, i32, String, i32, String, u32)>;
    fn get_network_interface_name_by_index(&self, index: i32) -> zbus::Result<String>;
}

/// Avahi 0.8's race-free calls live on a second interface of the server.
#[zbus::proxy(
    interface = "org.freedesktop.Avahi.Server2",
    default_service = "org.freedesktop.Avahi",
    default_path = "/"
)]
trait Server2 {
    fn service_browser_prepare(
        &self,
        interface: i32,
        protocol: i32,
        type_: &str,
        domain: &str,
        flags: u32,
    ) -> zbus::Result<OwnedObjectPath>;
    #[allow(clippy::too_many_arguments)]
    fn service_resolver_prepare(
        &self,
        interface: i32,
        protocol: i32,
        name: &str,
        type_: &str,
        domain: &str,
        aprotocol: i32,
        flags: u32,
    ) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.Avahi.EntryGroup",
    default_service = "org.freedesktop.Avahi"
)]
trait EntryGroup {
    #[allow(clippy::too_many_arguments)]
    fn add_service(
        &self,
        interface: i32,
        protocol: i32,
        flags: u32,
        name: &str,
        type_: &str,
        domain: &str,
        host: &str,
        port: u16,
        txt: Vec<Vec<u8>>,
    ) -> zbus::Result<()>;
    fn commit(&self) -> zbus::Result<()>;
    fn reset(&self) -> zbus::Result<()>;
    fn free(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn state_changed(&self, state: i32, error: &str) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.Avahi.ServiceBrowser",
    default_service = "org.freedesktop.Avahi"
)]
trait ServiceBrowser {
    fn start(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn item_new(
        &self,
        interface: i32,
        protocol: i32,
        name: &str,
        type_: &str,
        domain: &str,
        flags: u32,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn item_remove(
        &self,
        interface: i32,
        protocol: i32,
        name: &str,
        type_: &str,
        domain: &str,
        flags: u32,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.Avahi.ServiceResolver",
    default_service = "org.freedesktop.Avahi"
)]
trait ServiceResolver {
    fn start(&self) -> zbus::Result<()>;
    fn free(&self) -> zbus::Result<()>;
    #[allow(clippy::too_many_arguments)]
    #[zbus(signal)]
    fn found(
        &self,
        interface: i32,
        protocol: i32,
        name: &str,
        type_: &str,
        domain: &str,
        host: &str,
        aprotocol: i32,
        address: &str,
        port: u16,
        txt: Vec<Vec<u8>>,
        flags: u32,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn failure(&self, error: &str) -> zbus::Result<()>;
}

/// What a manager says about itself in its TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub cluster: String,
    pub node: String,
    /// Its swarm-facing IPv4 addresses now.
    pub addrs: Vec<Ipv4Addr>,
    pub agent_port: u16,
}

/// An announcement as heard, with who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub announcement: Announcement,
    /// The address Avahi resolved the service to (the sender, as far as mDNS knows).
    pub sender: IpAddr,
    /// The local interface it was heard on.
    pub interface: String,
    /// The DNS-SD instance name it was published under.
    pub service: String,
}

/// What browsing reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Heard(Heard),
    /// The service of that name went away (its host withdrew it or left).
    Removed(String),
    /// An announcement that could not be read or resolved, and why.
    Unreadable(String),
    /// `org.freedesktop.Avahi` changed hands (avahi-daemon stopped, or a new
    /// one started): the unique bus names of the old and new owner, empty
    /// for none. Whatever was published or browsed with the old one is gone.
    AvahiOwner {
        old: String,
        new: String,
    },
}

/// What is wrong with an announcement's TXT record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    #[error("a TXT item is not UTF-8")]
    NotUtf8,
    #[error("TXT has no {0}=")]
    Missing(&'static str),
    #[error("TXT version {0:?} is not 1")]
    Version(String),
    #[error("TXT cluster= or node= is not a swarm ID")]
    NotSwarmId,
    #[error("TXT addrs= has {0:?}")]
    BadAddr(String),
    #[error("TXT addrs= must name 1 to 8 addresses")]
    AddrCount,
    #[error("TXT agent= is not a port")]
    BadPort,
}

/// Why an announced service could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving {name:?}: {source}")]
    Bus { name: String, source: zbus::Error },
    #[error("{name:?} resolved to {addr:?}")]
    BadAddress { name: String, addr: String },
    #[error("announcement {name:?} from {sender}: {source}")]
    Txt {
        name: String,
        sender: IpAddr,
        source: TxtError,
    },
    #[error("resolving {name:?}: {message}")]
    Failed { name: String, message: String },
    #[error("resolving {name:?}: no answer in 10s")]
    Timeout { name: String },
}

impl Announcement {
    pub fn txt(&self) -> Vec<Vec<u8>> {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        vec![
            b"v=1".to_vec(),
            format!("cluster={}", self.cluster).into_bytes(),
            format!("node={}", self.node).into_bytes(),
            format!("addrs={}", addrs.join(",")).into_bytes(),
            format!("agent={}", self.agent_port).into_bytes(),
        ]
    }

    /// Reads a TXT record; anything missing or malformed is an error naming it.
    pub fn parse(txt: &[Vec<u8>]) -> Result<Announcement, TxtError> {
        let mut fields = BTreeMap::new();
        for item in txt {
            let s = std::str::from_utf8(item).map_err(|_| TxtError::NotUtf8)?;
            if let Some((k, v)) = s.split_once('=') {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        let get = |k: &'static str| fields.get(k).cloned().ok_or(TxtError::Missing(k));
        let version = get("v")?;
        if version != "1" {
            return Err(TxtError::Version(version));
        }
        let id_ok = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric())
        };
        let cluster = get("cluster")?;
        let node = get("node")?;
        if !id_ok(&cluster) || !id_ok(&node) {
            return Err(TxtError::NotSwarmId);
        }
        let addrs = get("addrs")?
            .split(',')
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<Ipv4Addr>()
                    .map_err(|_| TxtError::BadAddr(a.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() || addrs.len() > 8 {
            return Err(TxtError::AddrCount);
        }
        let agent_port = get("agent")?.parse().map_err(|_| TxtError::BadPort)?;
        Ok(Announcement {
            cluster,
            node,
            addrs,
            agent_port,
        })
    }
}

pub use crate::host::ignored_interface;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("Avahi over D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("Avahi: {0}")]
    Avahi(String),
}

pub struct Avahi {
    conn: zbus::Connection,
    server: ServerProxy<'static>,
    server2: Server2Proxy<'static>,
    /// Services the browser reported and did not remove, as (interface
    /// index, name): after a move the same name shows up on a new interface
    /// before it is removed from the old one.
    known: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(i32, String)>>>,
    /// The bus connection that owned `org.freedesktop.Avahi` when connected:
    /// a restarted avahi-daemon has another, and has forgotten our entry
    /// group and browser.
    owner: String,
    /// The tasks that follow this daemon's browser and bus name: ended with
    /// it, so that a restarted avahi-daemon leaves nothing behind.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Avahi {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// What a published service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Established,
    /// Another host took the name: publish again under another.
    Collision,
    Failed(String),
}

impl Avahi {
    pub async fn connect() -> Result<Avahi, DiscoveryError> {
        let conn = zbus::Connection::system().await?;
        let server = ServerProxy::new(&conn).await?;
        let server2 = Server2Proxy::new(&conn).await?;
        let version = server.get_version_string().await?;
        tracing::debug!("Avahi {version}");
        let owner = avahi_owner(&conn).await?;
        Ok(Avahi {
            conn,
            server,
            server2,
            known: Default::default(),
            owner,
            tasks: Default::default(),
        })
    }

    /// The unique bus name of the avahi-daemon this connection talks to.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// Sends [`Event::AvahiOwner`] to `tx` whenever `org.freedesktop.Avahi`
    /// changes hands: a restarted avahi-daemon has forgotten every entry
    /// group and browser, while our bus connection lives on and hears
    /// nothing of it otherwise.
    pub async fn watch_owner(&self, tx: mpsc::Sender<Event>) -> Result<(), DiscoveryError> {
        let bus = zbus::fdo::DBusProxy::new(&self.conn).await?;
        let mut changes = bus
            .receive_name_owner_changed_with_args(&[(0, AVAHI_NAME)])
            .await?;
        self.keep(tokio::spawn(async move {
            while let Some(sig) = changes.next().await {
                let Ok(a) = sig.args() else { continue };
                let name = |o: &zbus::zvariant::Optional<zbus::names::UniqueName<'_>>| {
                    o.as_ref().map(|o| o.to_string()).unwrap_or_default()
                };
                let ev = Event::AvahiOwner {
                    old: name(&a.old_owner),
                    new: name(&a.new_owner),
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }

    /// Who owns `org.freedesktop.Avahi` now (`None`: nobody); a restarted
    /// avahi-daemon has another unique name than [`Avahi::owner`].
    pub async fn owner_now(&self) -> Option<String> {
        avahi_owner(&self.conn).await.ok()
    }

    /// Publishes `name` with the announcement; returns a stream of what
    /// becomes of it. Dropping the group's proxy does not withdraw it; call
    /// [`Avahi::withdraw`].
    pub async fn publish(
        &self,
        name: &str,
        ann: &Announcement,
    ) -> Result<(OwnedObjectPath, mpsc::Receiver<Published>), DiscoveryError> {
        let path = self.server.entry_group_new().await?;
        let group = EntryGroupProxy::builder(&self.conn)
            .path(path.clone())?
            .build()
            .await?;
        let mut states = group.receive_state_changed().await?;
        group
            .add_service(
                IF_UNSPEC,
                PROTO_INET,
                0,
                name,
                SERVICE_TYPE,
                "",
                "",
                ann.agent_port,
                ann.txt(),
            )
            .await?;
        group.commit().await?;
        let (tx, rx) = mpsc::channel(8);
        // Ends when the receiver is dropped (published anew) or with this
        // daemon (see Drop).
        self.keep(tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = tx.closed() => break,
                    sig = states.next() => match sig {
                        Some(sig) => sig,
                        None => break,
                    },
                };
                let Ok(args) = sig.args() else { continue };
                let ev = match args.state {
                    2 => Published::Established,
                    3 => Published::Collision,
                    4 => Published::Failed(args.error.to_string()),
                    _ => continue,
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }));
        Ok((path, rx))
    }

    pub async fn withdraw(&self, path: OwnedObjectPath) -> Result<(), DiscoveryError> {
        let group = EntryGroupProxy::builder(&self.conn)
            .path(path)?
            .build()
            .await?;
        group.free().await?;
        Ok(())
    }

    /// Browses for swarm-glue managers; every resolved announcement (or the
    /// reason one could not be read) goes to `tx`.
    pub async fn browse(&self, tx: mpsc::Sender<Event>) -> Result<(), DiscoveryError> {
        let path = self
            .server2
            .service_browser_prepare(IF_UNSPEC, PROTO_INET, SERVICE_TYPE, "", 0)
            .await?;
        let browser = ServiceBrowserProxy::builder(&self.conn)
            .path(path)?
            .build()
            .await?;
        let mut items = browser.receive_item_new().await?;
        let mut removed = browser.receive_item_remove().await?;
        browser.start().await?;
        let gone = tx.clone();
        let known = self.known.clone();
        self.keep(tokio::spawn(async move {
            while let Some(sig) = removed.next().await {
                if let Ok(a) = sig.args() {
                    if let Ok(mut k) = known.lock() {
                        k.remove(&(a.interface, a.name.to_string()));
                    }
                    if gone.send(Event::Removed(a.name.to_string())).await.is_err() {
                        break;
                    }
                }
            }
        }));
        let conn = self.conn.clone();
        let server = self.server.clone();
        let server2 = self.server2.clone();
        let known = self.known.clone();
        self.keep(tokio::spawn(async move {
            let _browser = browser;
            while let Some(sig) = items.next().await {
                let Ok(a) = sig.args() else { continue };
                // This host's own service, on each of its interfaces: nothing
                // to learn from it, and resolving it on lo or a bridge only
                // times out.
                if a.flags & LOOKUP_RESULT_OUR_OWN != 0 {
                    continue;
                }
                let (iface, name) = (a.interface, a.name.to_string());
                if let Ok(mut k) = known.lock() {
                    k.insert((iface, name.clone()));
                }
                let (conn, server, server2, tx) =
                    (conn.clone(), server.clone(), server2.clone(), tx.clone());
                tokio::spawn(async move {
                    let event = match resolve(&conn, &server, &server2, iface, &name).await {
                        Ok(h) => Event::Heard(h),
                        Err(e) => Event::Unreadable(e.to_string()),
                    };
                    let _ = tx.send(event).await;
                });
            }
        }));
        Ok(())
    }

    /// Resolves every browsed service again. A host that moved publishes a
    /// new record under the same name, and Avahi may first re-announce the
    /// old one: the browser reports the name once, so what it says now is
    /// only learnt by asking again.
    pub fn refresh(&self, tx: &mpsc::Sender<Event>) {
        // An interface that is gone (a host moved by replacing its link, as
        // the lab does) takes its entries with it: resolving on it can only
        // time out, and Avahi does not always say they were removed.
        let up: std::collections::BTreeSet<i32> = match nix::net::if_::if_nameindex() {
            Ok(ifs) => ifs.iter().map(|i| i.index() as i32).collect(),
            Err(_) => Default::default(),
        };
        let known: Vec<(i32, String)> = match self.known.lock() {
            Ok(mut k) => {
                if !up.is_empty() {
                    k.retain(|(iface, _)| up.contains(iface));
                }
                k.iter().cloned().collect()
            }
            Err(_) => return,
        };
        for (iface, name) in known {
            let (conn, server, server2, tx) = (
                self.conn.clone(),
                self.server.clone(),
                self.server2.clone(),
                tx.clone(),
            );
            tokio::spawn(async move {
                let event = match resolve(&conn, &server, &server2, iface, &name).await {
                    Ok(h) => Event::Heard(h),
                    Err(e) => Event::Unreadable(e.to_string()),
                };
                let _ = tx.send(event).await;
            });
        }
    }

    /// `<hostname>.local` → its IPv4 address.
    pub async fn resolve_host(&self, hostname: &str) -> Result<Ipv4Addr, DiscoveryError> {
        let (_, _, _, _, addr, _) = self
            .server
            .resolve_host_name(
                IF_UNSPEC,
                PROTO_INET,
                &format!("{hostname}.local"),
                PROTO_INET,
                0,
            )
            .await?;
        addr.parse()
            .map_err(|_| DiscoveryError::Avahi(format!("{hostname}.local resolved to {addr:?}")))
    }
}

async fn avahi_owner(conn: &zbus::Connection) -> Result<String, DiscoveryError> {
    let bus = zbus::fdo::DBusProxy::new(conn).await?;
    let name = zbus::names::BusName::try_from(AVAHI_NAME)
        .map_err(|e| DiscoveryError::Avahi(e.to_string()))?;
    Ok(bus
        .get_name_owner(name)
        .await
        .map_err(zbus::Error::from)?
        .to_string())
}

async fn resolve(
    conn: &zbus::Connection,
    server: &ServerProxy<'static>,
    server2: &Server2Proxy<'static>,
    iface: i32,
    name: &str,
) -> Result<Heard, ResolveError> {
    let fail = |source: zbus::Error| ResolveError::Bus {
        name: name.to_string(),
        source,
    };
    let path = server2
        .service_resolver_prepare(
            iface,
            PROTO_INET,
            name,
            SERVICE_TYPE,
            "local",
            PROTO_INET,
            0,
        )
        .await
        .map_err(fail)?;
    let resolver = ServiceResolverProxy::builder(conn)
        .path(path)
        .map_err(fail)?
        .build()
        .await
        .map_err(fail)?;
    let mut found = resolver.receive_found().await.map_err(fail)?;
    let mut failed = resolver.receive_failure().await.map_err(fail)?;
    resolver.start().await.map_err(fail)?;
    let outcome = tokio::select! {
        Some(sig) = found.next() => {
            let a = sig.args().map_err(fail)?;
            let sender: IpAddr = a.address.parse().map_err(|_| ResolveError::BadAddress {
                name: name.to_string(),
                addr: a.address.to_string(),
            })?;
            let interface = server
                .get_network_interface_name_by_index(a.interface)
                .await
                .unwrap_or_default();
            Announcement::parse(&a.txt)
                .map(|announcement| Heard { announcement, sender, interface, service: name.to_string() })
                .map_err(|source| ResolveError::Txt { name: name.to_string(), sender, source })
        }
        Some(sig) = failed.next() => Err(ResolveError::Failed {
            name: name.to_string(),
            message: sig.args().map(|a| a.error.to_string()).unwrap_or_default(),
        }),
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => Err(ResolveError::Timeout {
            name: name.to_string(),
        }),
    };
    let _ = resolver.free().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Announcement {
        Announcement {
            cluster: "uxkjd2inlweq3ha8euoz4e982".into(),
            node: "veprg1zs1ov2q9io4q55egp1s".into(),
            addrs: vec![Ipv4Addr::new(10, 231, 5, 7)],
            agent_port: 7950,
        }
    }

    #[test]
    fn an_announcement_survives_its_txt_record() {
        assert_eq!(Announcement::parse(&ann().txt()), Ok(ann()));
    }

    #[test]
    fn malformed_announcements_are_refused_with_the_reason() {
        let mut txt = ann().txt();
        txt[3] = b"addrs=10.0.0.300".to_vec();
        assert_eq!(
            Announcement::parse(&txt),
            Err(TxtError::BadAddr("10.0.0.300".into()))
        );
        let mut txt = ann().txt();
        txt[2] = b"node=../../etc".to_vec();
        assert!(Announcement::parse(&txt).is_err());
        let txt: Vec<Vec<u8>> = ann()
            .txt()
            .into_iter()
            .filter(|t| !t.starts_with(b"cluster="))
            .collect();
        assert_eq!(Announcement::parse(&txt), Err(TxtError::Missing("cluster")));
        let mut txt = ann().txt();
        txt[0] = b"v=2".to_vec();
        assert!(Announcement::parse(&txt).is_err());
    }
}
