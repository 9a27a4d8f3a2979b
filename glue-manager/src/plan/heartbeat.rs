//! The dispatcher heartbeat through a recovery: raised as soon as quorum is
//! back (a node that cannot reach a manager keeps the grace it had at its
//! last heartbeat, so the longer one must be known to every node before
//! re-addressing silences any of them), told again to each new leader, and
//! put back once the recovery is over — or as soon as only nodes Docker
//! declared down hold clean-up back: a node that stays down (or is gone for
//! good) must not keep the swarm at the raised period, where a failure is
//! noticed after 60 s, not 15 s. Any manager may do each; the first does.

use std::collections::BTreeSet;

use super::{Health, Phase};

/// What this manager knows of the heartbeat period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// It may still be raised: a recovery ran, or this manager just started.
    pub maybe_raised: bool,
    /// This recovery raised it already.
    pub held: bool,
    /// The leader whose dispatcher last heard the raised period.
    pub told_leader: String,
    /// This clean-up put it back already, only down nodes holding it.
    pub back_for_down: bool,
}

impl Default for Heartbeat {
    /// At start: maybe raised by a recovery this manager did not see end.
    fn default() -> Heartbeat {
        Heartbeat {
            maybe_raised: true,
            held: false,
            told_leader: String::new(),
            back_for_down: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Raise it for re-addressing.
    Raise { leader: String },
    /// Set it again: a new leader's dispatcher runs at Docker's default
    /// until the period changes (read in swarmkit's `Dispatcher.Run`).
    Retell { leader: String },
    /// Put it back; `for_down`: while clean-up waits only for down nodes
    /// (`why` names them).
    PutBack { why: String, for_down: bool },
}

impl Heartbeat {
    /// Takes in the phase a round starts in.
    pub fn note_phase(&mut self, phase: Phase) {
        self.maybe_raised |= phase != Phase::Idle;
        if phase != Phase::CleanUp {
            self.back_for_down = false;
        }
    }

    /// Before the round's work: a swarm at rest with the period maybe
    /// raised gets it back (the recovery ended while this manager was away).
    pub fn at_rest(&self, phase: Phase, health: &Health) -> Option<Move> {
        let healthy = matches!(health, Health::Healthy { .. });
        (phase == Phase::Idle && self.maybe_raised && healthy).then(|| Move::PutBack {
            why: String::new(),
            for_down: false,
        })
    }

    /// After the round's sets went out, in `phase` (the plan's next):
    /// `held_by` are the nodes clean-up waits for (by hostname when
    /// said), `down` those Docker declared down.
    pub fn moves(
        &self,
        phase: Phase,
        health: &Health,
        held_by: &BTreeSet<String>,
        down: &BTreeSet<String>,
        hostname: impl Fn(&str) -> String,
    ) -> Vec<Move> {
        let leader = match health {
            Health::Healthy { leader, .. } => Some(leader.clone()),
            _ => None,
        };
        let mut moves = Vec::new();
        let only_down = !held_by.is_empty() && held_by.iter().all(|n| down.contains(n));
        if phase == Phase::CleanUp && only_down && !self.back_for_down && leader.is_some() {
            let names: Vec<String> = held_by.iter().map(|n| hostname(n)).collect();
            moves.push(Move::PutBack {
                why: format!(" (clean-up waits only for {}, down)", names.join(", ")),
                for_down: true,
            });
        }
        let Some(leader) = leader else {
            return moves;
        };
        // Not after a put-back: that move ends the raised period.
        let retell = matches!(phase, Phase::Readdress | Phase::CleanUp)
            && self.held
            && moves.is_empty()
            && !leader.is_empty()
            && leader != self.told_leader;
        if retell {
            moves.push(Move::Retell {
                leader: leader.clone(),
            });
        }
        if phase == Phase::Readdress && !self.held {
            moves.push(Move::Raise { leader });
        } else if phase == Phase::Idle && self.maybe_raised {
            moves.push(Move::PutBack {
                why: String::new(),
                for_down: false,
            });
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn led_by(leader: &str) -> Health {
        Health::Healthy {
            leader: leader.into(),
            recorded: BTreeMap::new(),
        }
    }

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    fn moves(hb: &Heartbeat, phase: Phase, health: &Health) -> Vec<Move> {
        hb.moves(phase, health, &set(&[]), &set(&[]), str::to_string)
    }

    #[test]
    fn raised_once_quorum_is_back_and_told_again_to_each_new_leader() {
        let mut hb = Heartbeat::default();
        assert_eq!(moves(&hb, Phase::Readdress, &Health::NoLeader), []);
        let raise = moves(&hb, Phase::Readdress, &led_by("m1"));
        assert_eq!(
            raise,
            [Move::Raise {
                leader: "m1".into()
            }]
        );
        hb.held = true;
        hb.told_leader = "m1".into();
        assert_eq!(moves(&hb, Phase::Readdress, &led_by("m1")), []);
        assert_eq!(
            moves(&hb, Phase::CleanUp, &led_by("m2")),
            [Move::Retell {
                leader: "m2".into()
            }]
        );
        // Not raised again in clean-up, nor without a leader.
        hb.held = false;
        assert_eq!(moves(&hb, Phase::CleanUp, &led_by("m2")), []);
        assert_eq!(moves(&hb, Phase::Readdress, &Health::DockerDown), []);
    }

    #[test]
    fn put_back_when_the_recovery_is_over_or_only_down_nodes_hold_clean_up() {
        let mut hb = Heartbeat::default();
        let back = Move::PutBack {
            why: String::new(),
            for_down: false,
        };
        assert_eq!(
            moves(&hb, Phase::Idle, &led_by("m1")),
            std::slice::from_ref(&back)
        );
        assert_eq!(hb.at_rest(Phase::Idle, &led_by("m1")), Some(back));
        assert_eq!(hb.at_rest(Phase::Idle, &Health::NoLeader), None);
        hb.maybe_raised = false;
        assert_eq!(moves(&hb, Phase::Idle, &led_by("m1")), []);
        hb.note_phase(Phase::CleanUp);
        assert!(hb.maybe_raised);
        let hostname = |n: &str| format!("host-{n}");
        let down = set(&["w2", "w3"]);
        let for_down = hb.moves(
            Phase::CleanUp,
            &led_by("m1"),
            &set(&["w2"]),
            &down,
            hostname,
        );
        assert_eq!(
            for_down,
            [Move::PutBack {
                why: " (clean-up waits only for host-w2, down)".into(),
                for_down: true
            }]
        );
        // A node up among them: the period stays raised.
        let mixed = hb.moves(
            Phase::CleanUp,
            &led_by("m1"),
            &set(&["w1", "w2"]),
            &down,
            hostname,
        );
        assert_eq!(mixed, []);
        // Put back once per clean-up.
        hb.back_for_down = true;
        let again = hb.moves(
            Phase::CleanUp,
            &led_by("m1"),
            &set(&["w2"]),
            &down,
            hostname,
        );
        assert_eq!(again, []);
        hb.note_phase(Phase::Readdress);
        assert!(!hb.back_for_down);
    }
}
