//! The agent's decoder on arbitrary bytes: it must refuse or accept, never
//! panic, and never accept what the trusted key did not sign.

#![no_main]

use std::sync::OnceLock;

use glue_node_agent::protocol::{open_command, CommandContext, Envelope, SigningKey, TrustSet};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key"))
}

fuzz_target!(|data: &[u8]| {
    let trusted = TrustSet::new([key().public()]);
    let last = |_: &glue_node_agent::protocol::PublicKey| 0;
    let ctx = CommandContext {
        cluster: "c",
        node: "n",
        trusted: &trusted,
        now: 1_800_000_000,
        last_seq: &last,
    };
    // Raw bytes as an envelope.
    let _ = open_command(data, &ctx);
    // The same bytes as a validly signed payload: the parser behind the
    // signature check must be as robust.
    let _ = open_command(&key().seal(data.to_vec()).to_bytes(), &ctx);
    let _ = Envelope::open(data, &trusted);
});
