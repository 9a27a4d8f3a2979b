//! The thin HTTP layer: `POST /v1/command` and `GET /v1/status`, both answered
//! with an envelope signed by the agent. Bodies over the envelope limit are
//! refused without being read to the end.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::protocol::{Outcome, Refusal, RefusalCode, MAX_ENVELOPE_BYTES};

pub use glue_protocol::clock::unix_now;

fn respond(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(
    agent: Arc<Agent>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = unix_now();
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/status") => {
            let agent2 = agent.clone();
            let reply = tokio::task::spawn_blocking(move || agent2.status_reply(now))
                .await
                .unwrap_or_else(|_| agent.status_reply(now));
            respond(200, reply.seal(agent.signing_key()).to_bytes())
        }
        (&Method::POST, "/v1/command") => {
            match Limited::new(req.into_body(), MAX_ENVELOPE_BYTES)
                .collect()
                .await
            {
                Ok(body) => {
                    let bytes = body.to_bytes();
                    let agent2 = agent.clone();
                    // Logged where it is handled: a client that gives up
                    // (its timeout) drops this future, not the work, and a
                    // set applied after that was not logged at all.
                    let handled = tokio::task::spawn_blocking(move || {
                        let h = agent2.handle(&bytes, now);
                        if h.http_status == 200 {
                            tracing::info!(peer = %peer, "{}", h.log);
                        } else {
                            tracing::warn!(peer = %peer, "{}", h.log);
                        }
                        h
                    })
                    .await;
                    match handled {
                        Ok(h) => {
                            respond(h.http_status, h.reply.seal(agent.signing_key()).to_bytes())
                        }
                        Err(e) => refused(&agent, now, RefusalCode::Internal, e.to_string()),
                    }
                }
                Err(e) => {
                    let refusal = Refusal::new(
                        RefusalCode::Oversized,
                        format!("body over {MAX_ENVELOPE_BYTES} bytes or unreadable: {e}"),
                    );
                    tracing::warn!(peer = %peer, "refused: {refusal}");
                    refused(&agent, now, refusal.code, refusal.reason)
                }
            }
        }
        _ => respond(
            404,
            b"{\"error\":\"unknown endpoint; use POST /v1/command or GET /v1/status\"}".to_vec(),
        ),
    };
    Ok(response)
}

fn refused(agent: &Agent, now: u64, code: RefusalCode, reason: String) -> Response<Full<Bytes>> {
    let status = if code == RefusalCode::Oversized {
        413
    } else {
        500
    };
    let mut reply = agent.status_reply(now);
    reply.outcome = Outcome::Refused {
        refusal: Refusal::new(code, reason),
    };
    respond(status, reply.seal(agent.signing_key()).to_bytes())
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| route(agent.clone(), peer, req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(peer = %peer, "connection ended: {e}");
            }
        });
    }
}
