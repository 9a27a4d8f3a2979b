//! Talking to an agent: a signed command over HTTP, a reply that must be
//! signed by the agent's pinned key.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use glue_protocol::{
    AgentStatus, Command, CommandBody, Outcome, PublicKey, Reply, SigningKey, TrustSet,
    MAX_ENVELOPE_BYTES, VERSION,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent at {endpoint}: {message}")]
    Transport {
        endpoint: SocketAddr,
        message: String,
    },
    #[error("agent at {endpoint}: reply not signed by its pinned key {pinned}: {message}")]
    BadReply {
        endpoint: SocketAddr,
        pinned: String,
        message: String,
    },
    #[error("agent at {endpoint} refused {command}: {code}: {reason}")]
    Refused {
        endpoint: SocketAddr,
        command: &'static str,
        code: String,
        reason: String,
    },
}

pub struct Issuer<'a> {
    pub key: &'a SigningKey,
    pub cluster: &'a str,
    pub seq: u64,
    pub now: u64,
}

/// Sends `body` to the agent of node `target`; returns what the agent has in
/// force, from a reply verified against its pinned key.
pub async fn send(
    endpoint: SocketAddr,
    pinned: PublicKey,
    target: &str,
    issuer: &Issuer<'_>,
    body: CommandBody,
    timeout: Duration,
) -> Result<AgentStatus, AgentError> {
    let command = body.name();
    let cmd = Command {
        v: VERSION,
        cluster: issuer.cluster.to_string(),
        target: target.to_string(),
        issuer: issuer.key.public(),
        seq: issuer.seq,
        expires: issuer.now + 30,
        body,
    };
    let envelope = cmd.seal(issuer.key).to_bytes();
    let transport = |message: String| AgentError::Transport { endpoint, message };
    let bytes = tokio::time::timeout(timeout, post(endpoint, envelope))
        .await
        .map_err(|_| transport(format!("no answer within {}s", timeout.as_secs())))??;
    let (_, reply) =
        Reply::open(&bytes, &TrustSet::new([pinned])).map_err(|r| AgentError::BadReply {
            endpoint,
            pinned: pinned.short(),
            message: r.reason,
        })?;
    if reply.node != target
        || reply.in_reply_to != issuer.seq && !matches!(reply.outcome, Outcome::Refused { .. })
    {
        return Err(AgentError::BadReply {
            endpoint,
            pinned: pinned.short(),
            message: format!(
                "answer from node {:?} to command {} (expected {target}, {})",
                reply.node, reply.in_reply_to, issuer.seq
            ),
        });
    }
    match reply.outcome {
        Outcome::Refused { refusal } => Err(AgentError::Refused {
            endpoint,
            command,
            code: refusal.code.as_str().to_string(),
            reason: refusal.reason,
        }),
        Outcome::Applied { status } | Outcome::Status { status } => Ok(status),
    }
}

async fn post(endpoint: SocketAddr, body: Vec<u8>) -> Result<Bytes, AgentError> {
    let transport = |what: &str, e: &dyn std::fmt::Display| AgentError::Transport {
        endpoint,
        message: format!("{what}: {e}"),
    };
    let stream = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|e| transport("connecting", &e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport("handshake", &e))?;
    tokio::spawn(conn);
    let req = Request::post("/v1/command")
        .header("host", endpoint.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport("building the request", &e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| transport("sending the command", &e))?;
    let collected = Limited::new(resp.into_body(), MAX_ENVELOPE_BYTES)
        .collect()
        .await
        .map_err(|e| transport("reading the reply", &*e))?;
    Ok(collected.to_bytes())
}
