//! Content encodings, frame by frame: decoding what the API sends so the leak guard reads
//! the bytes a page would, and encoding what the browser gets as its `Accept-Encoding` asks.
//!
//! Every call takes one frame and gives back what that frame decodes or encodes to, at
//! once: encoders are flushed after each frame (a sync flush), so a body that streams from
//! the API still streams to the browser (the price is a little ratio on bodies sent in
//! many small frames). Nothing holds a whole body.
//!
//! Decoded: `gzip` (also `x-gzip`), `deflate` (zlib-wrapped, as RFC 9110 defines it), `br`
//! and `zstd`. Encoded for the browser: `br` or `gzip`. Anything else (`compress`, a
//! made-up `none`, two encodings stacked) cannot be read, so the leak guard refuses it.

use std::io::Write;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use http::{HeaderMap, HeaderValue};

/// Bytes one frame may decode to: a decompression bomb is cut off, not held in memory.
const MAX_DECODED_PER_FRAME: usize = 64 * 1024 * 1024;

/// A content encoding tokengate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The name in `Content-Encoding`.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        })
    }
}

/// What a response's `Content-Encoding` says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// Not encoded (no header, or `identity`).
    Identity,
    /// One encoding tokengate decodes.
    Readable(Coding),
    /// Anything else, or more than one encoding.
    Unreadable,
}

/// Reads `Content-Encoding`.
pub fn encoding_of(headers: &HeaderMap) -> Encoded {
    let mut names = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.eq_ignore_ascii_case("identity"));
    let Some(first) = names.next() else { return Encoded::Identity };
    if names.next().is_some() {
        return Encoded::Unreadable;
    }
    match first.to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Encoded::Readable(Coding::Gzip),
        "deflate" => Encoded::Readable(Coding::Deflate),
        "br" => Encoded::Readable(Coding::Brotli),
        "zstd" => Encoded::Readable(Coding::Zstd),
        _ => Encoded::Unreadable,
    }
}

/// The encoding a browser asks for by `Accept-Encoding`: `br` before `gzip`, neither when
/// it refuses both (`q=0`) or names neither.
pub fn preferred_by(request_headers: &HeaderMap) -> Option<Coding> {
    let mut best: Option<(Coding, u16)> = None;
    for value in request_headers.get_all(ACCEPT_ENCODING) {
        for item in value.to_str().unwrap_or("").split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            // Compared without case and without a lower-cased copy: browsers send this
            // header on every call.
            let coding = if name.eq_ignore_ascii_case("br") {
                Coding::Brotli
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                Coding::Gzip
            } else {
                continue;
            };
            let quality = parts
                .find_map(|p| p.trim().strip_prefix("q=").map(|q| q.trim().parse::<f32>().unwrap_or(0.0)))
                .unwrap_or(1.0);
            let weight = (quality.clamp(0.0, 1.0) * 1000.0) as u16;
            // Equal weights: br wins (it is listed first among what we offer).
            let better = match best {
                None => weight > 0,
                Some((held, held_weight)) => {
                    weight > held_weight
                        || (weight == held_weight && coding == Coding::Brotli && held != coding)
                }
            };
            if better {
                best = Some((coding, weight));
            }
        }
    }
    best.map(|(coding, _)| coding)
}

/// Why a body could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the body is not valid in its content encoding")]
    Corrupt,
    #[error("one frame decodes to more than the allowed size")]
    TooLarge,
}

/// A streaming decoder for one body.
pub enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(Box<ZstdDecoder>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

// The constructors, `push` and `finish` are never inlined: a codec's state (miniz's is
// ~43 KiB) is built on the stack before it is boxed, and inlined into the request walk
// that frame made every poll of `App::proxy` probe and touch 57 KiB of stack, encoded
// answer or not (docs/performance.md).
impl Decoder {
    #[inline(never)]
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Gzip => Decoder::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
            Coding::Deflate => Decoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Brotli => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            Coding::Zstd => Decoder::Zstd(Box::new(ZstdDecoder::new())),
        }
    }

    /// What `input` decodes to (possibly nothing yet).
    #[inline(never)]
    pub fn push(&mut self, input: &[u8]) -> Result<Bytes, CodecError> {
        let corrupt = |_| CodecError::Corrupt;
        let output = match self {
            Decoder::Gzip(decoder) => {
                decoder.write_all(input).map_err(corrupt)?;
                decoder.flush().map_err(corrupt)?;
                decoder.get_mut()
            }
            Decoder::Deflate(decoder) => {
                decoder.write_all(input).map_err(corrupt)?;
                decoder.flush().map_err(corrupt)?;
                decoder.get_mut()
            }
            Decoder::Brotli(decoder) => {
                decoder.write_all(input).map_err(corrupt)?;
                decoder.flush().map_err(corrupt)?;
                decoder.get_mut()
            }
            Decoder::Zstd(decoder) => return decoder.push(input),
        };
        take(output)
    }

    /// The rest at the end of the body; `Corrupt` if the body stopped mid-stream.
    #[inline(never)]
    pub fn finish(self) -> Result<Bytes, CodecError> {
        let corrupt = |_| CodecError::Corrupt;
        let output = match self {
            Decoder::Gzip(decoder) => decoder.finish().map_err(corrupt)?,
            Decoder::Deflate(decoder) => decoder.finish().map_err(corrupt)?,
            Decoder::Brotli(decoder) => decoder.into_inner().map_err(|_| CodecError::Corrupt)?,
            Decoder::Zstd(decoder) => return decoder.finish(),
        };
        Ok(Bytes::from(output))
    }
}

/// zstd, decoded with the size cap checked as output grows (the C library's streaming
/// API), so a bomb is stopped before it fills memory.
pub struct ZstdDecoder {
    raw: Option<zstd::stream::raw::Decoder<'static>>,
    /// The library's hint after the last call: 0 once every frame so far is complete.
    incomplete: usize,
}

impl ZstdDecoder {
    fn new() -> Self {
        // Fails only if the library cannot allocate its context; then every push fails.
        Self { raw: zstd::stream::raw::Decoder::new().ok(), incomplete: 0 }
    }

    fn push(&mut self, input: &[u8]) -> Result<Bytes, CodecError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let raw = self.raw.as_mut().ok_or(CodecError::Corrupt)?;
        let mut input = InBuffer::around(input);
        let mut out: Vec<u8> = Vec::new();
        loop {
            out.reserve(32 * 1024);
            let start = out.len();
            let mut buffer = OutBuffer::around_pos(&mut out, start);
            self.incomplete = raw.run(&mut input, &mut buffer).map_err(|_| CodecError::Corrupt)?;
            let filled = buffer.pos() == buffer.capacity();
            if out.len() > MAX_DECODED_PER_FRAME {
                return Err(CodecError::TooLarge);
            }
            if input.pos() == input.src.len() && !filled {
                return Ok(Bytes::from(out));
            }
        }
    }

    fn finish(self) -> Result<Bytes, CodecError> {
        match self.incomplete {
            0 => Ok(Bytes::new()),
            _ => Err(CodecError::Corrupt),
        }
    }
}

/// A streaming encoder for one body, flushed after every frame.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

impl Encoder {
    /// gzip at level 5 and brotli at quality 4: fast levels, for a proxy on the request path.
    /// Never inlined, like [`Decoder::new`].
    #[inline(never)]
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Brotli => {
                Encoder::Brotli(Box::new(brotli::CompressorWriter::new(Vec::new(), 4096, 4, 22)))
            }
            // Only br and gzip are offered to browsers (`preferred_by`).
            Coding::Gzip | Coding::Deflate | Coding::Zstd => {
                Encoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(5)))
            }
        }
    }

    /// `input`, encoded and flushed.
    #[inline(never)]
    pub fn push(&mut self, input: &[u8]) -> Result<Bytes, CodecError> {
        let corrupt = |_| CodecError::Corrupt;
        let output = match self {
            Encoder::Gzip(encoder) => {
                encoder.write_all(input).map_err(corrupt)?;
                encoder.flush().map_err(corrupt)?;
                encoder.get_mut()
            }
            Encoder::Brotli(encoder) => {
                encoder.write_all(input).map_err(corrupt)?;
                encoder.flush().map_err(corrupt)?;
                encoder.get_mut()
            }
        };
        Ok(Bytes::from(std::mem::take(output)))
    }

    /// The encoding's end.
    #[inline(never)]
    pub fn finish(self) -> Result<Bytes, CodecError> {
        match self {
            Encoder::Gzip(encoder) => encoder.finish().map(Bytes::from).map_err(|_| CodecError::Corrupt),
            Encoder::Brotli(encoder) => Ok(Bytes::from(encoder.into_inner())),
        }
    }
}

fn take(output: &mut Vec<u8>) -> Result<Bytes, CodecError> {
    if output.len() > MAX_DECODED_PER_FRAME {
        output.clear();
        return Err(CodecError::TooLarge);
    }
    Ok(Bytes::from(std::mem::take(output)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: http::HeaderName, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_static(value));
        map
    }

    fn round_trip(coding: Coding, frames: &[&[u8]]) -> Vec<u8> {
        let mut encoder = Encoder::new(coding);
        let mut decoder = Decoder::new(coding);
        let mut out = Vec::new();
        for frame in frames {
            let encoded = encoder.push(frame).unwrap_or_else(|e| panic!("{e}"));
            let decoded = decoder.push(&encoded).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&decoded[..], *frame, "each flushed frame decodes at once");
            out.extend_from_slice(&decoded);
        }
        let tail = encoder.finish().unwrap_or_else(|e| panic!("{e}"));
        out.extend_from_slice(&decoder.push(&tail).unwrap_or_else(|e| panic!("{e}")));
        out.extend_from_slice(&decoder.finish().unwrap_or_else(|e| panic!("{e}")));
        out
    }

    #[test]
    fn every_frame_survives_a_round_trip_at_once() {
        let frames: [&[u8]; 3] = [b"{\"a\":", b"\"first\"", b",\"b\":2}"];
        for coding in [Coding::Gzip, Coding::Brotli] {
            assert_eq!(round_trip(coding, &frames), b"{\"a\":\"first\",\"b\":2}".to_vec(), "{coding:?}");
        }
    }

    #[test]
    fn deflate_is_zlib_wrapped() {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"hello deflate").unwrap_or_else(|e| panic!("{e}"));
        let body = encoder.finish().unwrap_or_else(|e| panic!("{e}"));
        let mut decoder = Decoder::new(Coding::Deflate);
        let mut out = decoder.push(&body).unwrap_or_else(|e| panic!("{e}")).to_vec();
        out.extend_from_slice(&decoder.finish().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(out, b"hello deflate");
    }

    #[test]
    fn garbage_in_a_known_encoding_is_corrupt() {
        let mut decoder = Decoder::new(Coding::Gzip);
        assert!(decoder.push(b"this is not gzip at all").is_err());
        let mut decoder = Decoder::new(Coding::Zstd);
        assert!(decoder.push(b"this is not zstd at all").is_err());
    }

    #[test]
    fn zstd_decodes_as_it_streams_and_a_cut_body_is_corrupt() {
        let text = br#"{"items":[1,2,3],"note":"zstd from the API"}"#.repeat(200);
        let body = zstd::stream::encode_all(&text[..], 3).unwrap_or_else(|e| panic!("{e}"));
        let mut decoder = Decoder::new(Coding::Zstd);
        let mut out = Vec::new();
        for chunk in body.chunks(17) {
            out.extend_from_slice(&decoder.push(chunk).unwrap_or_else(|e| panic!("{e}")));
        }
        out.extend_from_slice(&decoder.finish().unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(out, text);
        let mut cut = Decoder::new(Coding::Zstd);
        let _ = cut.push(&body[..body.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cut.finish(), Err(CodecError::Corrupt)), "a body cut mid-frame");
    }

    #[test]
    fn a_zstd_bomb_is_stopped_at_the_cap() {
        let zeros = vec![0u8; MAX_DECODED_PER_FRAME + 1024];
        let body = zstd::stream::encode_all(&zeros[..], 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(body.len() < 64 * 1024, "a small body");
        assert!(matches!(Decoder::new(Coding::Zstd).push(&body), Err(CodecError::TooLarge)));
    }

    #[test]
    fn the_content_encoding_is_read_strictly() {
        let cases = [
            ("gzip", Encoded::Readable(Coding::Gzip)),
            ("x-gzip", Encoded::Readable(Coding::Gzip)),
            ("BR", Encoded::Readable(Coding::Brotli)),
            ("deflate", Encoded::Readable(Coding::Deflate)),
            ("identity", Encoded::Identity),
            ("none", Encoded::Unreadable),
            ("zstd", Encoded::Readable(Coding::Zstd)),
            ("compress", Encoded::Unreadable),
            ("gzip, br", Encoded::Unreadable),
        ];
        for (value, expected) in cases {
            assert_eq!(encoding_of(&headers(CONTENT_ENCODING, value)), expected, "{value}");
        }
        assert_eq!(encoding_of(&HeaderMap::new()), Encoded::Identity);
    }

    #[test]
    fn the_browsers_preference_is_read_with_its_weights() {
        let cases = [
            ("gzip, deflate, br", Some(Coding::Brotli)),
            ("gzip", Some(Coding::Gzip)),
            ("br;q=0.5, gzip;q=0.9", Some(Coding::Gzip)),
            ("br;q=0, gzip;q=0", None),
            ("identity", None),
            ("*", None),
        ];
        for (value, expected) in cases {
            assert_eq!(preferred_by(&headers(ACCEPT_ENCODING, value)), expected, "{value}");
        }
    }
}
