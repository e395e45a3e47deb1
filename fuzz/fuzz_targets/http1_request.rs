//! HTTP/1.1 request heads as the sidecar byte path reads them (`bearing_http1::parse_request`)
//! and the head it writes upstream, then edited as a gateway would (`edit_fields`).
//!
//! Properties: a head that parses is parsed the same when it arrives in pieces (every proper
//! prefix is "incomplete", never refused or complete); the written head re-parses to the same
//! framing and is a fixed point of the rewrite; it carries no hop-by-hop field; editing its
//! fields keeps its framing. Pending (skippable): one plain `Content-Length` (`cl-list`), exactly
//! one `Host` without `/` (`host`).
#![no_main]

use bearing_fuzz::{fields_named, skipped, Splits};
use bearing_http1::{edit_fields, parse_request, BodyLength, NotForwarded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut out = Vec::new();
    let Ok(Some(head)) = parse_request(input, &mut out) else {
        return;
    };
    assert!(head.head_len <= input.len());
    assert!(matches!(
        head.body,
        BodyLength::Empty | BodyLength::Length(1..)
    ));

    // The same head over several reads: incomplete until its last byte.
    let mut splits = Splits::new(seed);
    let mut seen = 0;
    let mut scratch = Vec::new();
    while seen < head.head_len {
        seen = (seen + splits.next_len()).min(head.head_len);
        let got = parse_request(&input[..seen], &mut scratch);
        if seen < head.head_len {
            assert_eq!(
                got,
                Ok(None),
                "prefix of {seen} bytes of a {}-byte head",
                head.head_len
            );
        } else {
            assert_eq!(got, Ok(Some(head)));
            assert_eq!(scratch, out);
        }
    }

    // The written head: HTTP/1.1, complete, same framing, and a fixed point.
    assert!(out.ends_with(b"\r\n\r\n"));
    let line_end = out.iter().position(|b| *b == b'\n').unwrap_or(0);
    assert!(out[..line_end].ends_with(b" HTTP/1.1\r"));
    let mut again = Vec::new();
    let Ok(Some(second)) = parse_request(&out, &mut again) else {
        panic!(
            "the written head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(second.head_len, out.len());
    assert_eq!(second.body, head.body);
    assert_eq!(
        (second.is_head, second.idempotent),
        (head.is_head, head.idempotent)
    );
    assert!(second.keep_alive);
    assert_eq!(again, out, "rewriting is not idempotent");

    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(fields_named(&out, hop).is_empty(), "{hop} forwarded");
    }
    for te in fields_named(&out, "te") {
        assert!(te.eq_ignore_ascii_case(b"trailers"), "TE forwarded");
    }
    if !skipped("cl-list") {
        let lengths = fields_named(&out, "content-length");
        assert!(
            lengths.len() <= 1,
            "{} content-length fields forwarded",
            lengths.len()
        );
        for v in lengths {
            assert!(
                !v.is_empty() && v.iter().all(u8::is_ascii_digit),
                "content-length {v:?}"
            );
        }
    }
    if !skipped("host") {
        let hosts = fields_named(&out, "host");
        assert_eq!(
            hosts.len(),
            1,
            "request forwarded with {} Host fields",
            hosts.len()
        );
        assert!(!hosts[0].contains(&b'/'), "Host {:?} forwarded", hosts[0]);
    }

    // A gateway's header edits keep the framing.
    let mut edited = out.clone();
    edit_fields(
        &mut edited,
        |name| name.first().is_some_and(|b| b.eq_ignore_ascii_case(&b'x')),
        [
            (&b"x-added"[..], &b"1"[..]),
            (&b"content-length"[..], &b"7"[..]),
        ],
    );
    match parse_request(&edited, &mut again) {
        Ok(Some(third)) => {
            assert_eq!(third.body, head.body);
            assert_eq!(third.head_len, edited.len());
        }
        // The added field can take a head of MAX_HEADERS fields past the limit (431).
        Err(NotForwarded::Reject { status: 431, .. }) => {}
        other => panic!(
            "the edited head gives {other:?}: {:?}",
            String::from_utf8_lossy(&edited)
        ),
    }
});
