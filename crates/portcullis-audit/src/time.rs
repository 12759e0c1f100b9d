//! RFC 3339 timestamps in UTC, without a calendar library.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (microseconds, UTC). Times before 1970 are written
/// as the epoch.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let text = rfc3339_bytes(time);
    String::from_utf8_lossy(&text).into_owned()
}

/// [`rfc3339`] into a buffer of its fixed length (years up to 9999; a later year is written
/// as 9999), without formatting machinery: the writer stamps every record.
pub(crate) fn rfc3339_bytes(time: SystemTime) -> [u8; 27] {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, value: u64| {
        if let Some(slot) = out.get_mut(at..at + width) {
            put_decimal(slot, value);
        }
    };
    put(0, 4, y.min(9999));
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 6, u64::from(since.subsec_micros()));
    out
}

/// Writes `value` in decimal into `slot`, right-aligned and padded with zeros (digits beyond
/// the slot's length are dropped).
pub(crate) fn put_decimal(slot: &mut [u8], mut value: u64) {
    for b in slot.iter_mut().rev() {
        // (A digit: `value % 10` is below 10.)
        *b = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_known_instants() {
        let at = |s: u64, us: u32| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(u64::from(us)))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_795_700_000, 123_456), "2026-11-26T13:33:20.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }
}
