//! The streaming multipart scanner fed arbitrary bytes in arbitrary
//! chunkings: it never panics, finds the same parts however the body is
//! cut, and never holds more than `MAX_BUFFERED` bytes between chunks.
//!
//! Input: the `Content-Type` value up to the first `\n`, one byte seeding
//! the chunking, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taphook::proxy::multipart::{MultipartScanner, MAX_BUFFERED};

fuzz_target!(|data: &[u8]| {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(content_type) = std::str::from_utf8(&data[..nl]) else {
        return;
    };
    let Some((&seed, body)) = data[nl + 1..].split_first() else {
        return;
    };
    let Some(mut whole) = MultipartScanner::for_content_type(content_type) else {
        return;
    };
    whole.feed(body);
    assert!(whole.buffered() <= MAX_BUFFERED);

    let mut cut = MultipartScanner::for_content_type(content_type).unwrap();
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    let mut rest = body;
    while !rest.is_empty() {
        // Mostly small chunks, now and then a large one.
        let max = if rng.u8(..) < 16 {
            rest.len()
        } else {
            1 + usize::from(seed % 64)
        };
        let n = rng.usize(1..=max.min(rest.len()));
        cut.feed(&rest[..n]);
        assert!(
            cut.buffered() <= MAX_BUFFERED,
            "{} bytes held",
            cut.buffered()
        );
        rest = &rest[n..];
    }
    let files = whole.into_files();
    assert_eq!(
        files,
        cut.into_files(),
        "the chunking changed the parts found"
    );
    assert!(files.len() <= 100);
    for f in &files {
        assert!(f.field.chars().count() <= 1024 && f.filename.chars().count() <= 1024);
    }
});
