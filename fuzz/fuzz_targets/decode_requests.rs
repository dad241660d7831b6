//! Request decoding: arbitrary bytes, split at arbitrary points, through the incremental
//! decoder a server uses, and through the whole-message decoders. Must never panic, and the
//! split must not change what is decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_proto::{RequestDecoder, RequestEvent, Request, Response};

/// Decodes `data` read in pieces of `step` bytes; returns a printable trace of events.
fn trace(data: &[u8], step: usize) -> Vec<String> {
    let mut decoder = RequestDecoder::new();
    let mut out = Vec::new();
    let mut content = 0usize;
    for read in data.chunks(step.max(1)) {
        let mut rest = read;
        loop {
            match decoder.decode(rest) {
                Ok((used, event)) => {
                    rest = &rest[used..];
                    match event {
                        Some(RequestEvent::Content(piece)) => content += piece.len(),
                        Some(other) => {
                            out.push(format!("{content} {other:?}"));
                            content = 0;
                        }
                        None => break,
                    }
                }
                Err(error) => {
                    out.push(format!("error {error}"));
                    return out;
                }
            }
        }
    }
    out.push(format!("end {content} boundary={}", decoder.at_boundary()));
    out
}

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Response::decode(data);
    let Some((&step, rest)) = data.split_first() else { return };
    assert_eq!(trace(rest, rest.len()), trace(rest, usize::from(step)));
});
