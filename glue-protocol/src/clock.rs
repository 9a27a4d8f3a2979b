//! The system clock as both programs read it: Unix time, 0 before 1970
//! (a clock that far off fails every freshness check, it does not panic).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    unix_ms() / 1000
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
