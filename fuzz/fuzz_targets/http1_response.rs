//! HTTP/1.1 response heads and body framing as the byte path relays them:
//! `bearing_http1::parse_response`, then `BodyProgress` over the bytes after the head, fed in
//! reads of fuzzer-chosen sizes (chunked decoding across arbitrary read splits).
//!
//! Properties: every proper prefix of a head is incomplete; the written head re-parses to the
//! same status and framing and is a fixed point; the body's end (or its refusal) does not
//! depend on how the bytes were split; a body of known length ends exactly at its length.
//! Pending (skippable): a final status is at least 100 (`status`); an HTTP/1.0 response with
//! `Transfer-Encoding` is not reused (`http10-te`).
#![no_main]

use bearing_fuzz::{fields_named, skipped, Splits};
use bearing_http1::{parse_response, BodyLength, BodyProgress, Refused};
use libfuzzer_sys::fuzz_target;

/// Runs a body over `bytes` in reads of `splits` sizes: bytes taken and whether it ended, or
/// the refusal.
fn relay(length: BodyLength, bytes: &[u8], splits: &mut Splits) -> Result<(usize, bool), Refused> {
    let mut progress = BodyProgress::new(length);
    let mut taken = 0;
    while taken < bytes.len() && !progress.is_done() {
        let offered = splits.next_len().min(bytes.len() - taken);
        let n = progress.advance(&bytes[taken..taken + offered])?;
        assert!(n <= offered);
        taken += n;
        if n < offered {
            // Fewer bytes than offered only once the body has ended.
            assert!(progress.is_done(), "body stopped early without ending");
            break;
        }
    }
    Ok((taken, progress.is_done()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, seed], input)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (request_is_head, close_downstream) = (flags & 1 != 0, flags & 2 != 0);
    let mut out = Vec::new();
    let Ok(Some(head)) = parse_response(input, request_is_head, close_downstream, &mut out) else {
        return;
    };
    assert!(head.head_len <= input.len());
    assert_eq!(head.interim, (100..200).contains(&head.status));
    let mut splits = Splits::new(seed);
    let mut seen = 0;
    let mut scratch = Vec::new();
    while seen < head.head_len {
        seen = (seen + splits.next_len()).min(head.head_len);
        if seen < head.head_len {
            let got = parse_response(
                &input[..seen],
                request_is_head,
                close_downstream,
                &mut scratch,
            );
            assert_eq!(
                got,
                Ok(None),
                "prefix of {seen} bytes of a {}-byte head",
                head.head_len
            );
        }
    }

    let mut again = Vec::new();
    let Ok(Some(second)) = parse_response(&out, request_is_head, close_downstream, &mut again)
    else {
        panic!(
            "the written head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(
        (second.status, second.body, second.head_len),
        (head.status, head.body, out.len())
    );
    assert_eq!(again, out, "rewriting is not idempotent");
    if head.body == BodyLength::Chunked {
        assert!(
            fields_named(&out, "content-length").is_empty(),
            "content-length beside chunked"
        );
    }
    if !head.interim && (close_downstream || head.body == BodyLength::UntilClose) {
        assert_eq!(fields_named(&out, "connection"), [&b"close"[..]]);
    }
    if !skipped("status") {
        assert!(head.status >= 100, "status {} relayed", head.status);
    }
    if !skipped("http10-te") && input.starts_with(b"HTTP/1.0") {
        let te = bearing_http1::written_head(&out)
            .is_some_and(|(_, mut f)| f.any(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding")));
        assert!(
            !(te && head.reusable),
            "HTTP/1.0 response with transfer-encoding reused"
        );
    }

    let body = &input[head.head_len..];
    let whole = relay(head.body, body, &mut Splits::new(0));
    let split = relay(head.body, body, &mut splits);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "body end depends on the read splits"),
        (Err(_), Err(_)) => {}
        _ => panic!("read splits change the outcome: {whole:?} vs {split:?}"),
    }
    match (head.body, whole) {
        (BodyLength::Empty, Ok(r)) => assert_eq!(r, (0, true)),
        (BodyLength::Length(n), Ok((taken, done))) => {
            assert_eq!(taken as u64, n.min(body.len() as u64));
            assert_eq!(done, taken as u64 == n);
        }
        (BodyLength::UntilClose, Ok(r)) => assert_eq!(r, (body.len(), false)),
        (BodyLength::Chunked, Ok((taken, true))) => assert!(body[..taken].ends_with(b"\r\n\r\n")),
        (BodyLength::Chunked, _) => {}
        (_, Err(e)) => panic!("{e} for a body that is not chunked"),
    }
});
