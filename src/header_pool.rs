//! `HeaderMap`s kept for reuse, per thread: the maps of a forwarded call's request and
//! answer (each an index table and an entry vector) are made and freed on every request,
//! about 200 instructions each (`bench/callgrind.sh`). A connection worker is one thread,
//! so a map freed after one request's answer is written serves the next request's head.
//!
//! Only empty maps are kept ([`HeaderMap::clear`] drops every name and value first, so
//! nothing of a request outlives it here), at most [`KEPT`] a thread, none grown beyond
//! [`MAX_CAPACITY`] entries by an unusual head.

use std::cell::RefCell;

use http::HeaderMap;

/// Spare maps kept per thread: a worker has a request's and an answer's map out at once
/// per connection it is serving, and gets them back at its answer's end.
pub const KEPT: usize = 16;
/// The largest map kept (by entries it has room for); a larger one is freed.
pub const MAX_CAPACITY: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `capacity` headers: a spare one if this thread has one.
pub fn take(capacity: usize) -> HeaderMap {
    let spare = SPARE.try_with(|spare| spare.try_borrow_mut().ok()?.pop()).ok().flatten();
    match spare {
        Some(mut map) => {
            map.reserve(capacity);
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives `map` back for a later [`take`] on this thread, emptied; or frees it.
pub fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_CAPACITY {
        return;
    }
    map.clear();
    // At thread exit the spares are gone already; the map is then just freed.
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < KEPT {
                spare.push(map);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{COOKIE, HOST};
    use http::HeaderValue;

    fn spares() -> usize {
        SPARE.with(|spare| spare.borrow().len())
    }

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        let mut map = take(4);
        map.insert(COOKIE, HeaderValue::from_static("tg=secret"));
        map.insert(HOST, HeaderValue::from_static("shop.test"));
        let room = map.capacity();
        let before = spares();
        give(map);
        assert_eq!(spares(), before + 1);
        let again = take(2);
        assert!(again.is_empty(), "nothing of the last request is left");
        assert!(again.get(COOKIE).is_none());
        assert_eq!(again.capacity(), room, "its room, not a new allocation");
        assert_eq!(spares(), before);
    }

    #[test]
    fn the_pool_is_bounded_and_keeps_no_large_maps() {
        for _ in 0..KEPT + 4 {
            give(HeaderMap::with_capacity(8));
        }
        assert_eq!(spares(), KEPT);
        give(HeaderMap::with_capacity(MAX_CAPACITY * 4));
        assert_eq!(spares(), KEPT);
        let taken: Vec<HeaderMap> = (0..KEPT + 1).map(|_| take(3)).collect();
        assert_eq!(spares(), 0);
        assert!(taken.iter().all(|map| map.is_empty() && map.capacity() >= 3));
    }
}
