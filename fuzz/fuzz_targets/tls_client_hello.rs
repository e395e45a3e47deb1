//! The ClientHello peek zone proxies and PERMISSIVE inbounds run on every accepted connection
//! (`bearing_tls::parse_client_hello`), and the SNI forms it feeds: Kuma's tags form, the
//! resource form.
//!
//! Properties: every proper prefix of a parsed record is `Incomplete`; the SNI is printable
//! ASCII, at most 255 bytes, and passes the check every terminating listener makes
//! (`sni_problem`); a tags-form SNI re-renders to an SNI that parses to the same service, mesh
//! and tags; a resource-form SNI has a 16-hex-digit hash, a name and a mesh. The fuzzer's
//! bytes are also tried as an SNI string directly.
#![no_main]

use bearing_tls::{
    parse_client_hello, parse_resource_sni, parse_tags_sni, sni_problem, ClientHello,
};
use libfuzzer_sys::fuzz_target;

fn check_sni(sni: &str) {
    if let Some(tags) = parse_tags_sni(sni) {
        assert!(!tags.service.is_empty());
        let rendered = tags.to_string();
        let Some(again) = parse_tags_sni(&rendered) else {
            panic!("{sni:?} renders as {rendered:?}, which does not parse");
        };
        assert_eq!((again.service, again.mesh), (tags.service, tags.mesh));
        let (mut a, mut b) = (again.tags.clone(), tags.tags.clone());
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert_eq!(
            again.to_string(),
            rendered,
            "canonical form is not a fixed point"
        );
    }
    if let Some(resource) = parse_resource_sni(sni) {
        let hex = resource.hash.strip_prefix('a').unwrap_or_default();
        assert_eq!(hex.len(), 16);
        assert!(!resource.name.is_empty() && !resource.mesh.is_empty());
        assert!(sni.ends_with(resource.kind.suffix()));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_sni(text);
    }
    match parse_client_hello(data) {
        ClientHello::Parsed { sni, .. } => {
            let record = 5 + usize::from(u16::from_be_bytes([data[3], data[4]]));
            assert!(record <= data.len());
            for cut in [0, 1, 4, 5, record / 2, record - 1] {
                if cut < record {
                    assert_eq!(
                        parse_client_hello(&data[..cut]),
                        ClientHello::Incomplete,
                        "cut at {cut}"
                    );
                }
            }
            if let Some(sni) = sni {
                assert!(sni.bytes().all(|b| b.is_ascii_graphic()), "SNI {sni:?}");
                assert_eq!(sni_problem(sni.as_bytes()), None, "SNI {sni:?}");
                check_sni(sni);
            }
        }
        ClientHello::NotTls => {
            assert!(data.first().is_some_and(|b| *b != 22) || data.get(1) != Some(&3))
        }
        ClientHello::Incomplete | ClientHello::Invalid(_) => {}
    }
});
