//! HTTP/1.1 wire pieces both of tokengate's own HTTP/1.1 sides use (`server::h1` reading
//! browsers' requests, `upstream::h1` reading the API's answers): `Content-Length` values,
//! the chunked decoder, and writing header lines and lengths without `fmt`.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line, and the most trailer bytes read (and dropped).
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a body read from an HTTP/1.1 connection (an answer or a browser's upload) broke off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyFault {
    #[error("the connection closed before the body ended")]
    Truncated,
    #[error("reading the body failed")]
    Read,
    #[error("the body's chunked framing is not valid")]
    Framing,
}

/// How a body read from an HTTP/1.1 connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// When the connection closes (an answer only; never a request).
    UntilClose,
}

impl Framing {
    /// The next step of a body so framed, from what is buffered in `read`: data to hand
    /// on (taken off `read`), read more, the end, or a framing fault. `self` moves on.
    pub fn step(&mut self, read: &mut BytesMut) -> Step {
        match *self {
            Framing::Length(0) => Step::End,
            Framing::Length(left) if !read.is_empty() => {
                let take = left.min(read.len() as u64);
                *self = Framing::Length(left - take);
                // `take` is at most `read.len()`, so it fits in usize.
                Step::Data(read.split_to(take as usize).freeze())
            }
            Framing::UntilClose if !read.is_empty() => Step::Data(read.split().freeze()),
            Framing::Chunked(chunk) => match chunked_step(read, chunk) {
                Ok((next, step)) => {
                    *self = Framing::Chunked(next);
                    step
                }
                Err(fault) => Step::Fail(fault),
            },
            Framing::Length(_) | Framing::UntilClose => Step::Fill,
        }
    }
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

/// Adds one `Content-Length` line (a list of lengths) to the `length` seen so far: every
/// value must be a number, and all must agree.
pub fn merge_length(value: &[u8], length: &mut Option<u64>) -> Result<(), ()> {
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|seen| seen != n) {
            return Err(());
        }
        *length = Some(n);
    }
    Ok(())
}

/// One step of reading a body.
pub enum Step {
    Data(Bytes),
    /// The reader moved on (past a chunk's size line, its end, a trailer line): go on.
    Continue,
    End,
    /// Read more from the connection.
    Fill,
    Fail(BodyFault),
}

/// One step of a chunked body from what is buffered: the reader's next place and what
/// to do (hand on data, read more, or end).
pub fn chunked_step(read: &mut BytesMut, chunk: Chunk) -> Result<(Chunk, Step), BodyFault> {
    match chunk {
        Chunk::Size => {
            let Some(line_end) = memchr::memchr(b'\n', read) else {
                return if read.len() > MAX_CHUNK_LINE {
                    Err(BodyFault::Framing)
                } else {
                    Ok((chunk, Step::Fill))
                };
            };
            if line_end > MAX_CHUNK_LINE {
                return Err(BodyFault::Framing);
            }
            let size = chunk_size(&read[..line_end])?;
            read.advance(line_end + 1);
            Ok((if size == 0 { Chunk::Trailers(0) } else { Chunk::Data(size) }, Step::Continue))
        }
        Chunk::Data(left) => {
            if read.is_empty() {
                return Ok((chunk, Step::Fill));
            }
            let take = left.min(read.len() as u64);
            let bytes = read.split_to(take as usize).freeze();
            let next = if take == left { Chunk::DataEnd } else { Chunk::Data(left - take) };
            Ok((next, Step::Data(bytes)))
        }
        Chunk::DataEnd => match read.first() {
            None => Ok((chunk, Step::Fill)),
            Some(b'\n') => {
                read.advance(1);
                Ok((Chunk::Size, Step::Continue))
            }
            Some(b'\r') if read.len() < 2 => Ok((chunk, Step::Fill)),
            Some(b'\r') if read[1] == b'\n' => {
                read.advance(2);
                Ok((Chunk::Size, Step::Continue))
            }
            Some(_) => Err(BodyFault::Framing),
        },
        Chunk::Trailers(seen) => {
            let Some(line_end) = memchr::memchr(b'\n', read) else {
                return if seen + read.len() > MAX_TRAILER_BYTES {
                    Err(BodyFault::Framing)
                } else {
                    Ok((chunk, Step::Fill))
                };
            };
            let line = &read[..line_end];
            let empty = line.is_empty() || line == b"\r";
            read.advance(line_end + 1);
            if empty {
                return Ok((Chunk::Trailers(seen), Step::End));
            }
            let seen = seen + line_end + 1;
            if seen > MAX_TRAILER_BYTES {
                return Err(BodyFault::Framing);
            }
            Ok((Chunk::Trailers(seen), Step::Continue))
        }
    }
}

/// The size of a chunk-size line (`1a;ext=x\r`): hex digits, extensions ignored.
pub fn chunk_size(line: &[u8]) -> Result<u64, BodyFault> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(BodyFault::Framing);
    }
    digits.iter().try_fold(0u64, |size, &digit| {
        let value = (digit as char).to_digit(16).ok_or(BodyFault::Framing)?;
        Ok(size * 16 + u64::from(value))
    })
}

pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

/// `n` in decimal, written into the end of `buffer`.
pub fn format_len(buffer: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}
