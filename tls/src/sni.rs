//! Peeking the SNI and ALPN of a TLS ClientHello, before any TLS library sees the connection.
//!
//! Hand-written on purpose: it runs on every accepted connection on bytes peeked from the
//! socket (zone ingress/egress routing by SNI, PERMISSIVE-mode sniffing), so it must not
//! allocate or copy, must return borrowed slices of the input, and must tell "need more bytes"
//! ([`ClientHello::Incomplete`]) from "this is not TLS" ([`ClientHello::NotTls`]) — which a TLS
//! library's ClientHello parsing, built to drive a handshake, does not offer.
//!
//! Scope: the ClientHello must fit in the first TLS record (at most 16 KiB, which every
//! ClientHello without huge post-quantum key shares or padding does). A ClientHello spread over
//! several records is reported as [`ClientHello::Invalid`]. Every length is bounds-checked, so
//! arbitrary input never panics or reads out of bounds.

/// TLS record content type `handshake`, the first byte of every TLS client's first record.
const HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 1;
/// Largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;
/// Extension `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `application_layer_protocol_negotiation` (RFC 7301).
const EXT_ALPN: u16 = 16;

/// What the first bytes of a connection say about a TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHello<'a> {
    /// A TLS record has started but is not complete yet: read more and parse again.
    Incomplete,
    /// The bytes are not the start of a TLS connection (e.g. plaintext HTTP).
    NotTls,
    /// A TLS record that does not hold a well-formed ClientHello; the text says what is wrong.
    Invalid(&'static str),
    /// A complete ClientHello.
    Parsed {
        /// The `server_name` host name, if the client sent one (printable ASCII, at most 255
        /// bytes, as every TLS-terminating listener also requires).
        sni: Option<&'a str>,
        /// Whether the client offered ALPN protocol `kuma` (mesh traffic).
        alpn_kuma: bool,
    },
}

/// Whether a connection whose first byte is `first` may be TLS (a handshake record starts
/// with 0x16), for PERMISSIVE mode deciding between mTLS and plaintext from one peeked byte.
pub fn is_tls_record_start(first: u8) -> bool {
    first == HANDSHAKE
}

/// Parses the TLS record at the start of `buf` as a ClientHello and returns its SNI host name
/// and whether ALPN offers `kuma`. Any proper prefix of a valid record gives `Incomplete`.
pub fn parse_client_hello(buf: &[u8]) -> ClientHello<'_> {
    match buf {
        [] => return ClientHello::Incomplete,
        [first, ..] if !is_tls_record_start(*first) => return ClientHello::NotTls,
        // Every TLS version, SSL 3.0 to 1.3, has major version 3 in the record header.
        [_, major, ..] if *major != 3 => return ClientHello::NotTls,
        _ => {}
    }
    let Some([_, _, _, len_hi, len_lo]) = buf.get(..5) else {
        return ClientHello::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
    if len > MAX_RECORD {
        return ClientHello::Invalid("record longer than 16 KiB");
    }
    let Some(record) = buf.get(5..5 + len) else {
        return ClientHello::Incomplete;
    };
    match parse_handshake(record) {
        Ok((sni, alpn_kuma)) => ClientHello::Parsed { sni, alpn_kuma },
        Err(reason) => ClientHello::Invalid(reason),
    }
}

/// Parses the handshake message in a complete record: the SNI and the `kuma` ALPN flag.
fn parse_handshake(record: &[u8]) -> Result<(Option<&str>, bool), &'static str> {
    let mut r = Reader(record);
    if r.u8().ok_or("empty handshake record")? != CLIENT_HELLO {
        return Err("first handshake message is not a ClientHello");
    }
    let len = r.u24().ok_or("truncated handshake header")?;
    let mut hello = Reader(
        r.take(len)
            .ok_or("ClientHello spans several records (not supported)")?,
    );
    hello
        .take(2 + 32)
        .ok_or("truncated ClientHello version and random")?;
    hello.vec8().ok_or("truncated legacy_session_id")?;
    hello.vec16().ok_or("truncated cipher_suites")?;
    hello.vec8().ok_or("truncated compression_methods")?;
    if hello.0.is_empty() {
        // A ClientHello without extensions (TLS 1.2 and older allow that).
        return Ok((None, false));
    }
    let mut extensions = Reader(hello.vec16().ok_or("truncated extensions")?);
    let (mut sni, mut seen_sni, mut alpn_kuma, mut seen_alpn) = (None, false, false, false);
    while !extensions.0.is_empty() {
        let kind = extensions.u16().ok_or("truncated extension header")?;
        let data = extensions.vec16().ok_or("truncated extension")?;
        match kind {
            EXT_SERVER_NAME if seen_sni => return Err("duplicate server_name extension"),
            EXT_SERVER_NAME => {
                seen_sni = true;
                sni = parse_server_name(data)?;
            }
            EXT_ALPN if seen_alpn => return Err("duplicate ALPN extension"),
            EXT_ALPN => {
                seen_alpn = true;
                alpn_kuma = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Ok((sni, alpn_kuma))
}

/// The first `host_name` of a `server_name` extension.
fn parse_server_name(data: &[u8]) -> Result<Option<&str>, &'static str> {
    let mut outer = Reader(data);
    let mut names = Reader(outer.vec16().ok_or("truncated server_name list")?);
    if !outer.0.is_empty() {
        return Err("bytes after the server_name list");
    }
    let mut host = None;
    while !names.0.is_empty() {
        let kind = names.u8().ok_or("truncated server_name entry")?;
        let name = names.vec16().ok_or("truncated server_name entry")?;
        if kind == 0 && host.is_none() {
            if let Some(problem) = crate::sni_problem(name) {
                return Err(problem);
            }
            host = Some(std::str::from_utf8(name).map_err(|_| "server_name is not UTF-8")?);
        }
    }
    Ok(host)
}

/// Whether an ALPN extension offers `kuma`.
fn parse_alpn(data: &[u8]) -> Result<bool, &'static str> {
    let mut outer = Reader(data);
    let mut protocols = Reader(outer.vec16().ok_or("truncated ALPN list")?);
    if !outer.0.is_empty() {
        return Err("bytes after the ALPN list");
    }
    let mut kuma = false;
    while !protocols.0.is_empty() {
        let protocol = protocols.vec8().ok_or("truncated ALPN protocol")?;
        if protocol.is_empty() {
            return Err("empty ALPN protocol name");
        }
        kuma |= protocol == crate::KUMA_ALPN;
    }
    Ok(kuma)
}

/// A cursor over a byte slice whose reads fail (None) instead of running past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(u16::from_be_bytes(*head))
    }

    fn u24(&mut self) -> Option<usize> {
        let ([a, b, c], rest) = self.0.split_first_chunk::<3>()?;
        self.0 = rest;
        Some(usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first flight of a real BoringSSL client (TLS 1.2 + 1.3, ALPN as given) to `server`.
    pub(crate) fn stack_client_hello(server: &str, alpn: &[&[u8]]) -> Vec<u8> {
        crate::external_connector(
            server,
            None,
            None,
            crate::ServerVerification::SkipAll,
            alpn,
            None,
        )
        .unwrap()
        .first_flight()
        .unwrap()
    }

    /// Replaces the equal-length `from` with `to` in `bytes` (to put a name no client sends
    /// into a real ClientHello; same length keeps every length field right).
    fn replace_same_len(bytes: &mut [u8], from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap();
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    }

    #[test]
    fn parses_stack_client_hello() {
        let hello = stack_client_hello("backend.mesh", &[b"h2", b"kuma"]);
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Parsed {
                sni: Some("backend.mesh"),
                alpn_kuma: true
            }
        );
        let hello = stack_client_hello("example.com", &[b"h2"]);
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Parsed {
                sni: Some("example.com"),
                alpn_kuma: false
            }
        );
        // An IP address is never sent as SNI.
        let hello = stack_client_hello("10.0.0.1", &[]);
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Parsed {
                sni: None,
                alpn_kuma: false
            }
        );
    }

    #[test]
    fn parses_kuma_tags_sni() {
        let hello = stack_client_hello("backend{mesh=default}", &[b"kuma"]);
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Parsed {
                sni: Some("backend{mesh=default}"),
                alpn_kuma: true
            }
        );
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let hello = stack_client_hello("backend.mesh", &[b"kuma"]);
        for end in 0..hello.len() {
            assert_eq!(
                parse_client_hello(&hello[..end]),
                ClientHello::Incomplete,
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn not_tls() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n"),
            ClientHello::NotTls
        );
        assert_eq!(parse_client_hello(&[0x16, 0x47]), ClientHello::NotTls);
        assert_eq!(parse_client_hello(&[0x16]), ClientHello::Incomplete);
        assert!(is_tls_record_start(0x16));
        assert!(!is_tls_record_start(b'G'));
    }

    #[test]
    fn invalid_records_say_why() {
        assert_eq!(
            parse_client_hello(&[0x16, 3, 1, 0xff, 0xff]),
            ClientHello::Invalid("record longer than 16 KiB")
        );
        assert_eq!(
            parse_client_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            ClientHello::Invalid("first handshake message is not a ClientHello")
        );
        assert_eq!(
            parse_client_hello(&[0x16, 3, 1, 0, 4, 1, 0, 1, 0]),
            ClientHello::Invalid("ClientHello spans several records (not supported)")
        );
        let mut hello = stack_client_hello("backend-mesh", &[]);
        replace_same_len(&mut hello, "backend-mesh", "backend mesh");
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Invalid("server_name host_name is not printable ASCII")
        );
    }

    /// A peeking listener refuses what a terminating one refuses: an SNI over 255 bytes, and
    /// (its documented scope) a ClientHello spread over several records.
    #[test]
    fn long_sni_and_fragmented_hello_are_invalid() {
        let mut hello = stack_client_hello(&"a".repeat(255), &[]);
        assert!(matches!(
            parse_client_hello(&hello),
            ClientHello::Parsed { sni: Some(s), .. } if s.len() == 255
        ));
        // One more byte in the name: every enclosing length grows by one.
        let at = hello.windows(255).position(|w| w == [b'a'; 255]).unwrap();
        hello.insert(at, b'a');
        for len_at in [3, at - 2, at - 5, at - 7] {
            let n = u16::from_be_bytes([hello[len_at], hello[len_at + 1]]) + 1;
            hello[len_at..len_at + 2].copy_from_slice(&n.to_be_bytes());
        }
        let hs_len = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) + 1;
        hello[6..9].copy_from_slice(&hs_len.to_be_bytes()[1..]);
        // The extensions block length sits after the fixed ClientHello fields.
        let mut r = Reader(&hello[9..]);
        r.take(34).unwrap();
        r.vec8().unwrap();
        r.vec16().unwrap();
        r.vec8().unwrap();
        let ext_at = hello.len() - r.0.len();
        let n = u16::from_be_bytes([hello[ext_at], hello[ext_at + 1]]) + 1;
        hello[ext_at..ext_at + 2].copy_from_slice(&n.to_be_bytes());
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Invalid("server_name host_name is longer than 255 bytes")
        );

        let hello = stack_client_hello("backend{mesh=default}", &[]);
        let (header, message) = hello.split_at(5);
        let mut fragmented = header[..3].to_vec();
        fragmented.extend([0, 10]);
        fragmented.extend(&message[..10]);
        assert_eq!(
            parse_client_hello(&fragmented),
            ClientHello::Invalid("ClientHello spans several records (not supported)")
        );
    }

    /// xorshift64: a dependency-free pseudo-random stream for the mutation test.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_mutations_never_panic() {
        let hello = stack_client_hello("backend.mesh", &[b"h2", b"kuma"]);
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let mut parsed = 0;
        for _ in 0..5000 {
            let mut input = hello.clone();
            for _ in 0..1 + xorshift(&mut state) % 4 {
                let at = (xorshift(&mut state) % input.len() as u64) as usize;
                input[at] = xorshift(&mut state) as u8;
            }
            let cut = (xorshift(&mut state) % (input.len() as u64 + 1)) as usize;
            let input = if xorshift(&mut state).is_multiple_of(4) {
                &input[..cut]
            } else {
                &input[..]
            };
            if let ClientHello::Parsed { .. } = parse_client_hello(input) {
                parsed += 1;
            }
        }
        // Mutations landing in the random or key share still parse: the test reached past
        // the header checks.
        assert!(parsed > 0);
    }
}
