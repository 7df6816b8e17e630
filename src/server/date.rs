//! The `Date` of answers: formatted once a second per thread, not once per answer.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// The second last formatted, and its IMF-fixdate.
    static NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Calls `f` with the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn with<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    NOW.with_borrow_mut(|(cached, text)| {
        if *cached != second || text.is_empty() {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_imf_fixdate_of_now() {
        let text = super::with(|date| String::from_utf8_lossy(date).into_owned());
        let parsed = httpdate::parse_http_date(&text).expect("an HTTP date");
        let off = std::time::SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(off.as_secs() <= 2, "{text}");
        assert_eq!(text.len(), 29);
    }
}
