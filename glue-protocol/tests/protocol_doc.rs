//! Keeps docs/protocol.md honest: its refusal codes and command types are the
//! code's, and its examples parse as the code's types.

use glue_protocol::{Command, RefusalCode, Reply, MAX_ENVELOPE_BYTES};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first column of the table that follows `heading`, without backticks.
fn table_after(doc: &str, heading: &str) -> Vec<String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` in the doc"));
    doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| l.split('|').nth(1))
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

fn json_blocks(doc: &str) -> Vec<String> {
    doc.split("```json")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_refusal_code_is_documented_and_every_documented_code_exists() {
    let documented = table_after(&doc(), "## Refusal codes");
    let code: Vec<String> = RefusalCode::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(
        documented, code,
        "docs/protocol.md and RefusalCode disagree"
    );
    for c in RefusalCode::ALL {
        let json = serde_json::to_string(&c).expect("json");
        assert_eq!(json.trim_matches('"'), c.as_str());
    }
}

#[test]
fn the_documented_command_types_are_the_ones_the_agent_knows() {
    let documented = table_after(&doc(), "Command types");
    assert_eq!(documented, vec!["set_rewrites", "status"]);
    for t in documented {
        let body: glue_protocol::CommandBody =
            serde_json::from_str(&format!(r#"{{"type":"{t}","generation":1,"rewrites":[]}}"#))
                .or_else(|_| serde_json::from_str(&format!(r#"{{"type":"{t}"}}"#)))
                .expect("parses");
        assert_eq!(body.name(), t);
    }
}

#[test]
fn the_examples_parse_and_the_size_limit_is_the_codes() {
    let d = doc();
    let blocks = json_blocks(&d);
    assert_eq!(blocks.len(), 3, "envelope, command and reply examples");
    let _: Command = serde_json::from_str(&blocks[1]).expect("command example parses");
    let _: Reply = serde_json::from_str(&blocks[2]).expect("reply example parses");
    assert!(d.contains(&MAX_ENVELOPE_BYTES.to_string()));
}
