//! Every bad command is refused with its reason and changes nothing: neither
//! the kernel (recorded, no batch) nor the persisted state. No root needed.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;

use common::{now, Fixture};
use glue_node_agent::netfilter::{Netfilter, NetfilterError, Recording};
use glue_node_agent::protocol::{
    CommandBody, Outcome, RefusalCode, SigningKey, MAX_ENVELOPE_BYTES,
};
use glue_node_agent::reset::{ResetError, Resetter};

#[derive(Default)]
struct Calls {
    nf: Recording,
    resets: std::sync::Mutex<Vec<Ipv4Addr>>,
}

struct Nf(Arc<Calls>);
impl Netfilter for Nf {
    fn nat_rules(&self) -> Result<String, NetfilterError> {
        self.0.nf.nat_rules()
    }
    fn restore(&self, batch: &str) -> Result<(), NetfilterError> {
        self.0.nf.restore(batch)
    }
}

struct Rs(Arc<Calls>);
impl Resetter for Rs {
    fn kill_sockets_to(&self, addrs: &[Ipv4Addr]) -> Result<(), ResetError> {
        self.0.resets.lock().expect("lock").extend_from_slice(addrs);
        Ok(())
    }
    fn forget_flows_to(&self, _: &[Ipv4Addr]) -> Vec<ResetError> {
        Vec::new()
    }
}

const OLD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
const NEW: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 87);

#[test]
fn every_bad_command_is_refused_with_its_reason_and_changes_nothing() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls.clone())));
    // One good command first, so there is a sequence to replay.
    let good = fx.set(5, 1, &[(OLD, NEW)]);
    let handled = agent.handle(&good, now());
    assert_eq!(handled.http_status, 200, "{}", handled.log);
    let state_before = std::fs::read(agent.state_path()).expect("state");
    let batches_before = calls.nf.batches.lock().expect("lock").len();

    let stranger = SigningKey::generate().expect("key");
    let mut cases: Vec<(&str, Vec<u8>, RefusalCode)> = vec![
        (
            "oversized",
            vec![b'{'; MAX_ENVELOPE_BYTES + 1],
            RefusalCode::Oversized,
        ),
        (
            "malformed",
            b"\x00\x01garbage".to_vec(),
            RefusalCode::Malformed,
        ),
        (
            "truncated",
            good[..good.len() - 9].to_vec(),
            RefusalCode::Malformed,
        ),
        ("replayed", good.clone(), RefusalCode::Replayed),
        (
            "unknown key",
            fx.command(6, CommandBody::Status)
                .seal(&stranger)
                .to_bytes(),
            RefusalCode::UntrustedKey,
        ),
        (
            "stale generation",
            fx.set(7, 0, &[]),
            RefusalCode::StaleGeneration,
        ),
        (
            "newer generation, but the set in force changed since it was read",
            fx.set_replacing(13, 9, &[], Some(0)),
            RefusalCode::StaleGeneration,
        ),
    ];
    let mut unsigned: serde_json::Value = serde_json::from_slice(&fx.set(8, 2, &[])).expect("json");
    unsigned["sig"] = serde_json::Value::String(String::new());
    cases.push((
        "unsigned",
        serde_json::to_vec(&unsigned).expect("json"),
        RefusalCode::BadSignature,
    ));
    let mut forged: serde_json::Value = serde_json::from_slice(&fx.set(9, 2, &[])).expect("json");
    forged["sig"] = serde_json::from_slice::<serde_json::Value>(
        &fx.command(9, CommandBody::Status)
            .seal(&stranger)
            .to_bytes(),
    )
    .expect("json")["sig"]
        .clone();
    cases.push((
        "wrongly signed",
        serde_json::to_vec(&forged).expect("json"),
        RefusalCode::BadSignature,
    ));
    let mut expired = fx.command(10, CommandBody::Status);
    expired.expires = now() - 120;
    cases.push((
        "expired",
        expired.seal(&fx.manager).to_bytes(),
        RefusalCode::Expired,
    ));
    let mut other_cluster = fx.command(11, CommandBody::Status);
    other_cluster.cluster = "another-cluster".into();
    cases.push((
        "wrong cluster",
        other_cluster.seal(&fx.manager).to_bytes(),
        RefusalCode::WrongCluster,
    ));
    let mut other_node = fx.command(12, CommandBody::Status);
    other_node.target = "another-node".into();
    cases.push((
        "wrong target",
        other_node.seal(&fx.manager).to_bytes(),
        RefusalCode::WrongTarget,
    ));

    for (what, bytes, code) in cases {
        let handled = agent.handle(&bytes, now());
        match &handled.reply.outcome {
            Outcome::Refused { refusal } => {
                assert_eq!(refusal.code, code, "{what}: {}", refusal.reason);
                assert!(!refusal.reason.is_empty(), "{what}: no reason given");
            }
            other => panic!("{what} was not refused: {other:?}"),
        }
        assert!(
            handled.http_status >= 400,
            "{what}: HTTP {}",
            handled.http_status
        );
        assert!(
            handled.log.starts_with("refused:"),
            "{what}: log `{}`",
            handled.log
        );
        assert_eq!(
            std::fs::read(agent.state_path()).expect("state"),
            state_before,
            "{what} changed the persisted state"
        );
        assert_eq!(
            calls.nf.batches.lock().expect("lock").len(),
            batches_before,
            "{what} touched netfilter"
        );
    }
}

#[test]
fn a_set_that_names_the_generation_in_force_is_taken() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls)));
    let first = agent.handle(&fx.set_replacing(1, 4, &[(OLD, NEW)], Some(0)), now());
    assert_eq!(first.http_status, 200, "{}", first.log);
    // Read at 4, chosen, sent: taken. Then another issuer's set read at 4
    // comes too late, whatever its generation.
    let second = agent.handle(&fx.set_replacing(2, 6, &[], Some(4)), now());
    assert_eq!(second.http_status, 200, "{}", second.log);
    let late = agent.handle(&fx.set_replacing(3, 9, &[(OLD, NEW)], Some(4)), now());
    match &late.reply.outcome {
        Outcome::Refused { refusal } => {
            assert_eq!(refusal.code, RefusalCode::StaleGeneration);
            assert!(
                refusal.reason.contains("changed since it was read"),
                "{}",
                refusal.reason
            );
        }
        other => panic!("a set read from generation 4 replaced generation 6: {other:?}"),
    }
    assert_eq!(agent.status().generation, 6);
    assert!(agent.status().rewrites.is_empty());
}

#[test]
fn a_replay_is_refused_after_a_restart_too() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let cmd = fx
        .command(3, CommandBody::Status)
        .seal(&fx.manager)
        .to_bytes();
    {
        let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls.clone())));
        assert_eq!(agent.handle(&cmd, now()).http_status, 200);
    }
    let restarted = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls)));
    let handled = restarted.handle(&cmd, now());
    assert!(
        matches!(&handled.reply.outcome, Outcome::Refused { refusal } if refusal.code == RefusalCode::Replayed),
        "{:?}",
        handled.reply
    );
}

#[test]
fn replies_are_signed_with_the_agents_own_key() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls)));
    let handled = agent.handle(
        &fx.command(1, CommandBody::Status)
            .seal(&fx.manager)
            .to_bytes(),
        now(),
    );
    let envelope = handled.reply.seal(agent.signing_key()).to_bytes();
    let pinned = glue_node_agent::protocol::TrustSet::new([agent.public_key()]);
    let (_, reply) = glue_node_agent::protocol::Reply::open(&envelope, &pinned).expect("verifies");
    assert_eq!(reply.in_reply_to, 1);
    assert!(matches!(reply.outcome, Outcome::Status { .. }));
}

#[test]
fn a_key_removed_from_the_trust_directory_is_refused_from_then_on() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls)));
    let first = fx
        .command(1, CommandBody::Status)
        .seal(&fx.manager)
        .to_bytes();
    assert_eq!(agent.handle(&first, now()).http_status, 200);
    std::fs::remove_file(fx.dir.join("trusted/manager-1.pub")).expect("remove key");
    let second = fx
        .command(2, CommandBody::Status)
        .seal(&fx.manager)
        .to_bytes();
    let handled = agent.handle(&second, now());
    assert!(
        matches!(&handled.reply.outcome, Outcome::Refused { refusal } if refusal.code == RefusalCode::UntrustedKey),
        "{:?}",
        handled.reply
    );
}

/// Fails its `kill_sockets_to` call number `.2` (from 0), records the
/// others like `Rs`.
struct FlakyRs(Arc<Calls>, std::sync::atomic::AtomicUsize, usize);
impl Resetter for FlakyRs {
    fn kill_sockets_to(&self, addrs: &[Ipv4Addr]) -> Result<(), ResetError> {
        if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == self.2 {
            return Err(ResetError::Failed {
                command: "ss -K".into(),
                reason: "simulated failure".into(),
            });
        }
        self.0.resets.lock().expect("lock").extend_from_slice(addrs);
        Ok(())
    }
    fn forget_flows_to(&self, _: &[Ipv4Addr]) -> Vec<ResetError> {
        Vec::new()
    }
}

#[test]
fn a_failed_reset_stays_pending_and_is_retried_even_after_a_restart() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let flaky = FlakyRs(calls.clone(), std::sync::atomic::AtomicUsize::new(0), 0);
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(flaky));
    let handled = agent.handle(&fx.set(1, 1, &[(OLD, NEW)]), now());
    assert!(
        matches!(&handled.reply.outcome, Outcome::Refused { refusal } if refusal.code == RefusalCode::Internal),
        "{:?}",
        handled.reply
    );
    assert!(calls.resets.lock().expect("lock").is_empty());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state_path()).expect("state")).expect("json");
    assert_eq!(
        state["pending_reset"],
        serde_json::json!([OLD.to_string()]),
        "{state}"
    );
    drop(agent);

    // The set was persisted with the reset still owed; a restarted agent pays it.
    let restarted = fx.agent(Box::new(Nf(calls.clone())), Box::new(Rs(calls.clone())));
    restarted.reassert().expect("reassert");
    assert_eq!(*calls.resets.lock().expect("lock"), vec![OLD]);
    // Paid: no longer owed in the persisted state.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(restarted.state_path()).expect("state"))
            .expect("json");
    assert_eq!(state["pending_reset"], serde_json::json!([]), "{state}");
}

#[test]
fn a_reset_that_a_repair_asked_for_stays_owed_when_it_fails() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let resetter = FlakyRs(calls.clone(), std::sync::atomic::AtomicUsize::new(0), 1);
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(resetter));
    let handled = agent.handle(&fx.set(1, 1, &[(OLD, NEW)]), now());
    assert_eq!(handled.http_status, 200, "{}", handled.log);
    let owed = || -> serde_json::Value {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(agent.state_path()).expect("state"))
                .expect("json");
        state["pending_reset"].clone()
    };
    assert_eq!(owed(), serde_json::json!([]));
    // The recorded kernel never holds the set, as if someone flushed it after
    // every apply: each check is a repair. The first one's reset fails...
    assert!(agent.reassert().is_err());
    assert_eq!(owed(), serde_json::json!([OLD.to_string()]));
    // ...and stays owed until a check pays it.
    agent.reassert().expect("reassert");
    assert_eq!(owed(), serde_json::json!([]));
    assert_eq!(*calls.resets.lock().expect("lock"), vec![OLD, OLD]);
}

/// Records, at each `kill_sockets_to`, what the state file says is owed: what
/// a restart would find if the agent were killed right there.
struct SeesOwed(
    std::path::PathBuf,
    Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
);
impl Resetter for SeesOwed {
    fn kill_sockets_to(&self, _: &[Ipv4Addr]) -> Result<(), ResetError> {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&self.0).expect("state")).expect("json");
        self.1
            .lock()
            .expect("lock")
            .push(state["pending_reset"].clone());
        Ok(())
    }
    fn forget_flows_to(&self, _: &[Ipv4Addr]) -> Vec<ResetError> {
        Vec::new()
    }
}

#[test]
fn a_reset_is_owed_in_the_state_file_while_it_runs_and_paid_after() {
    let fx = Fixture::new();
    let calls = Arc::new(Calls::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let resetter = SeesOwed(fx.dir.join("state.json"), seen.clone());
    let agent = fx.agent(Box::new(Nf(calls.clone())), Box::new(resetter));
    let handled = agent.handle(&fx.set(1, 1, &[(OLD, NEW)]), now());
    assert_eq!(handled.http_status, 200, "{}", handled.log);
    // The recorded kernel never holds the set: this check is a repair,
    // whose reset no set put in the state.
    agent.reassert().expect("reassert");
    let owed = serde_json::json!([OLD.to_string()]);
    assert_eq!(*seen.lock().expect("lock"), vec![owed.clone(), owed]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state_path()).expect("state")).expect("json");
    assert_eq!(state["pending_reset"], serde_json::json!([]), "{state}");
}
