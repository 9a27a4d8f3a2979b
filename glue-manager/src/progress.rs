//! What a recovery keeps on disk: its progress (see [`crate::plan::Recovery`])
//! and its timeline, read by `glue-manager status` and after a restart.

use serde::{Deserialize, Serialize};

use crate::plan::Recovery;

/// Persisted progress and the timeline of the last recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryFile {
    pub recovery: Recovery,
    /// (unix ms, line) of the current or last recovery.
    pub timeline: Vec<(u64, String)>,
    /// During clean-up: the nodes whose rewrites could not be removed yet,
    /// each with the reason (a node that is down keeps the recovery open).
    #[serde(default)]
    pub waiting: Vec<String>,
    /// How many timeline lines were left out (see [`RecoveryFile::record`]).
    #[serde(default)]
    pub left_out: usize,
}

/// The timeline keeps at most this many lines: its first [`TIMELINE_HEAD`]
/// (how the recovery began), a line saying how many were left out, and the
/// newest. A recovery can stay open for days (clean-up waits for a node that
/// is down), and the file is rewritten every round. The journal has every line.
pub const TIMELINE_MAX: usize = 200;
pub const TIMELINE_HEAD: usize = 20;

impl RecoveryFile {
    /// Adds a line to the timeline, leaving out the oldest after the head
    /// when it is full.
    pub fn record(&mut self, ms: u64, line: String) {
        self.timeline.push((ms, line));
        if self.timeline.len() <= TIMELINE_MAX {
            return;
        }
        // The first time, the line after the head becomes the marker (it
        // keeps that line's time) and the one after it goes: two left out.
        self.left_out += if self.left_out == 0 { 2 } else { 1 };
        self.timeline.remove(TIMELINE_HEAD + 1);
        self.timeline[TIMELINE_HEAD].1 = format!(
            "… {} lines left out here (journalctl -u glue-manager has every line)",
            self.left_out
        );
    }

    /// Starts the timeline of a new recovery.
    pub fn clear_timeline(&mut self) {
        self.timeline.clear();
        self.left_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_timeline_keeps_its_head_and_newest_lines_and_says_how_many_it_left_out() {
        let mut f = RecoveryFile::default();
        for i in 0..TIMELINE_MAX as u64 {
            f.record(i, format!("line {i}"));
        }
        assert_eq!(f.timeline.len(), TIMELINE_MAX);
        assert_eq!(f.left_out, 0);
        for i in TIMELINE_MAX as u64..TIMELINE_MAX as u64 + 50 {
            f.record(i, format!("line {i}"));
        }
        assert_eq!(f.timeline.len(), TIMELINE_MAX, "{:#?}", f.timeline);
        assert_eq!(f.left_out, 51);
        for (i, (ms, line)) in f.timeline[..TIMELINE_HEAD].iter().enumerate() {
            assert_eq!(
                (*ms, line.as_str()),
                (i as u64, format!("line {i}").as_str())
            );
        }
        // The marker takes the place (and the time) of the first line left out.
        assert_eq!(
            f.timeline[TIMELINE_HEAD],
            (
                TIMELINE_HEAD as u64,
                "… 51 lines left out here (journalctl -u glue-manager has every line)".to_string()
            )
        );
        let newest: Vec<u64> = f.timeline[TIMELINE_HEAD + 1..]
            .iter()
            .map(|t| t.0)
            .collect();
        let expected: Vec<u64> = (TIMELINE_HEAD as u64 + 51..TIMELINE_MAX as u64 + 50).collect();
        assert_eq!(newest, expected);
        // A new recovery starts a whole timeline again.
        f.clear_timeline();
        f.record(7, "detect".into());
        assert_eq!((f.timeline.len(), f.left_out), (1, 0));
    }
}
