//! Fuzzes the reading of HTTP/1.1 heads on both of tokengate's own HTTP/1.1 sides
//! (`server::h1` reading browsers' requests, `upstream::h1` reading the API's answers):
//! a head shaped like the connection's last ones is read by its `HeaderMemo`
//! (`HeaderMemo::replay`, `head_scan`), any other by `httparse`.
//!
//! Input: heads separated by 0xff bytes, read in order on one connection of each side.
//! Beyond "never panics" it checks that every head comes out exactly as it does on a
//! connection of its own (read by `httparse`): the same request or answer, framing,
//! keep-alive and bytes after the head, or the same refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::{server, upstream};

fuzz_target!(|data: &[u8]| {
    let mut requests = server::h1::HeaderMemo::default();
    let mut answers = upstream::h1::HeaderMemo::default();
    for head in data.split(|&b| b == 0xff).take(32) {
        let (alike, alone) = server::h1::read_alike_and_alone(&mut requests, head);
        assert_eq!(alike, alone, "request head {:?}", String::from_utf8_lossy(head));
        let (alike, alone) = upstream::h1::read_alike_and_alone(&mut answers, head);
        assert_eq!(alike, alone, "answer head {:?}", String::from_utf8_lossy(head));
    }
});
