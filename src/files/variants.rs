//! Precompressed variants, built when the snapshot is built, never per
//! request.
//!
//! For each file held in memory whose type compresses ([`is_compressible`])
//! and that is at least [`MIN_COMPRESS_BYTES`] long, the loader asks for a
//! gzip and a brotli variant:
//! 1. a sibling in the root (`app.js.gz`, `app.js.br`) is used as the variant
//!    if it decodes to exactly the file's bytes ([`decodes_to`]); a stale or
//!    corrupt sibling is reported and replaced by our own compression;
//! 2. otherwise the loader compresses the file ([`compress`]) at a level
//!    chosen for load time, not for the last byte: gzip level
//!    [`GZIP_LEVEL`], brotli quality [`BROTLI_QUALITY_SMALL`], or
//!    [`BROTLI_QUALITY_LARGE`] for files large enough to repay it;
//! 3. a variant is kept only if it saves at least 10% ([`worth_keeping`]):
//!    a variant that barely helps still costs memory and a `Vary`.
//!
//! A sibling stays servable under its own name (`/app.js.gz`, as
//! `application/gzip`, without `Content-Encoding`): someone who links to it
//! asks for those bytes. It is never reached through a clean URL or index.
//!
//! zstd is not built: it would need a C library (`zstd-sys`) in the build,
//! and every browser that sends `zstd` also sends `br`, which we serve.

use std::io::{self, Read, Write};

use crate::files::Encoding;

/// Smaller files are not worth a variant: headers dominate, and a 200-byte
/// body gains little from compression.
pub const MIN_COMPRESS_BYTES: usize = 256;
/// flate2's default level: within a few percent of level 9 at a fraction of
/// its time.
pub const GZIP_LEVEL: u32 = 6;
/// Brotli quality for files of at least [`BROTLI_LARGE_FILE_BYTES`]: close to
/// quality 11's ratio on text at many times its speed (≈12 MB/s on one core
/// here, measured on the Rust book's JavaScript).
pub const BROTLI_QUALITY_LARGE: u32 = 9;
/// Brotli quality for smaller files. From quality 5 up, the `brotli` crate
/// spends milliseconds setting up its hash tables for every file, whatever
/// its size: on the Rust book's HTML, JS and CSS (most files a few KiB to a
/// few tens of KiB) quality 5 ran at 1.6 MB/s and quality 4 at 35 MB/s, for
/// 21.7% against 20.3% of the original size (gzip -6: 22.5%, 26 MB/s). A
/// build folder is mostly small files, so this is what keeps loading fast.
pub const BROTLI_QUALITY_SMALL: u32 = 4;
pub const BROTLI_LARGE_FILE_BYTES: usize = 128 * 1024;
/// The largest brotli window (4 MiB, the default); a smaller file gets a
/// window just large enough for it, which is as good for the ratio and much
/// cheaper to set up (the encoder's tables scale with the window).
pub const BROTLI_MAX_WINDOW_BITS: u32 = 22;
const BROTLI_MIN_WINDOW_BITS: u32 = 10;

/// The codings the loader builds, in the order it builds them.
pub const BUILT_ENCODINGS: [Encoding; 2] = [Encoding::Gzip, Encoding::Brotli];

/// Whether a `Content-Type` is worth compressing: text and the structured
/// text formats of the web, fonts that are not already compressed, and wasm.
/// Images (but SVG and icons), video, audio, archives and WOFF fonts are
/// already compressed.
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.starts_with("text/") || essence.ends_with("+json") || essence.ends_with("+xml") {
        return true;
    }
    matches!(
        essence,
        "application/javascript"
            | "application/x-javascript"
            | "application/ecmascript"
            | "application/json"
            | "application/xml"
            | "application/wasm"
            | "application/x-sh"
            | "application/x-tar"
            | "application/vnd.ms-fontobject"
            | "font/ttf"
            | "font/otf"
            | "application/x-font-ttf"
            | "application/x-font-opentype"
            | "image/svg+xml"
            | "image/x-icon"
            | "image/vnd.microsoft.icon"
            | "image/bmp"
    )
}

/// Compresses `data` with `encoding` (gzip or brotli).
pub fn compress(encoding: Encoding, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    compress_into(encoding, data, &mut out)?;
    Ok(out)
}

/// [`compress`] into `out` (cleared first): the loader reuses one buffer per
/// thread for every file and copies each kept variant into an allocation of
/// its exact size, so the heap is not left with one oversized, then
/// shrunk, encoder buffer per variant between the bodies it keeps.
pub fn compress_into(encoding: Encoding, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    match encoding {
        Encoding::Identity => out.extend_from_slice(data),
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Encoding::Brotli => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: brotli_quality(data.len()) as i32,
                lgwin: brotli_window_bits(data.len()) as i32,
                size_hint: data.len(),
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &data[..], out, &params)?;
        }
    }
    Ok(())
}

fn brotli_quality(len: usize) -> u32 {
    if len >= BROTLI_LARGE_FILE_BYTES {
        BROTLI_QUALITY_LARGE
    } else {
        BROTLI_QUALITY_SMALL
    }
}

/// log2 of the smallest window that holds `len` bytes, within brotli's bounds.
fn brotli_window_bits(len: usize) -> u32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    bits.clamp(BROTLI_MIN_WINDOW_BITS, BROTLI_MAX_WINDOW_BITS)
}

/// Whether a variant of `variant_len` bytes is worth keeping next to an
/// identity body of `identity_len`: it must save at least 10%.
pub fn worth_keeping(identity_len: usize, variant_len: usize) -> bool {
    variant_len.saturating_mul(10) <= identity_len.saturating_mul(9)
}

/// Whether `encoded` decodes to exactly `expected`. Decoding stops as soon
/// as the output differs or grows past `expected`, so a corrupt or hostile
/// sibling (a decompression bomb) costs no more than the file itself.
pub fn decodes_to(encoding: Encoding, encoded: &[u8], expected: &[u8]) -> bool {
    match encoding {
        Encoding::Identity => encoded == expected,
        Encoding::Gzip => stream_equals(flate2::read::GzDecoder::new(encoded), expected),
        Encoding::Brotli => stream_equals(brotli::Decompressor::new(encoded, 64 * 1024), expected),
    }
}

fn stream_equals(mut decoder: impl Read, expected: &[u8]) -> bool {
    let mut buffer = [0u8; 16 * 1024];
    let mut matched = 0;
    loop {
        match decoder.read(&mut buffer) {
            Ok(0) => return matched == expected.len(),
            Ok(n) => {
                let end = matched + n;
                if end > expected.len() || buffer[..n] != expected[matched..end] {
                    return false;
                }
                matched = end;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Vec<u8> {
        let mut text = Vec::new();
        for i in 0..200 {
            text.extend_from_slice(format!("function f{i}(a, b) {{ return a * {i} + b; }}\n").as_bytes());
        }
        text
    }

    #[test]
    fn brotli_window_fits_the_file() {
        assert_eq!(brotli_window_bits(0), 10);
        assert_eq!(brotli_window_bits(1000), 10);
        assert_eq!(brotli_window_bits(1025), 11);
        assert_eq!(brotli_window_bits(65_536), 16);
        assert_eq!(brotli_window_bits(65_537), 17);
        assert_eq!(brotli_window_bits(100 << 20), 22);
    }

    #[test]
    fn compressible_types() {
        for ct in [
            "text/html; charset=utf-8",
            "text/css",
            "application/javascript; charset=utf-8",
            "application/json",
            "image/svg+xml; charset=utf-8",
            "application/wasm",
            "application/manifest+json",
            "font/ttf",
        ] {
            assert!(is_compressible(ct), "{ct}");
        }
        for ct in [
            "image/png",
            "image/jpeg",
            "video/mp4",
            "font/woff2",
            "application/gzip",
            "application/zip",
        ] {
            assert!(!is_compressible(ct), "{ct}");
        }
    }

    #[test]
    fn variants_round_trip_and_are_deterministic() {
        let data = text();
        for encoding in BUILT_ENCODINGS {
            let compressed = compress(encoding, &data).unwrap();
            assert!(worth_keeping(data.len(), compressed.len()), "{encoding:?}");
            assert!(decodes_to(encoding, &compressed, &data));
            assert_eq!(
                compress(encoding, &data).unwrap(),
                compressed,
                "same bytes every time"
            );
        }
    }

    #[test]
    fn stale_or_corrupt_siblings_are_detected() {
        let data = text();
        let mut other = data.clone();
        other[10] ^= 1;
        for encoding in BUILT_ENCODINGS {
            let compressed = compress(encoding, &data).unwrap();
            assert!(!decodes_to(encoding, &compressed, &other));
            assert!(
                !decodes_to(encoding, &compressed, &data[..data.len() - 1]),
                "longer than expected"
            );
            assert!(
                !decodes_to(encoding, &compressed[..compressed.len() / 2], &data),
                "truncated"
            );
            assert!(!decodes_to(encoding, b"not compressed at all", &data));
        }
    }

    #[test]
    fn incompressible_data_is_not_kept() {
        // xorshift noise does not compress.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for encoding in BUILT_ENCODINGS {
            let compressed = compress(encoding, &noise).unwrap();
            assert!(!worth_keeping(noise.len(), compressed.len()), "{encoding:?}");
        }
    }
}
