//! Conformance over every Envoy golden of Kuma's corpus: each decodes (placeholders replaced).

mod corpus;

#[test]
fn every_golden_decodes() {
    let files = corpus::envoy_goldens();
    assert!(files.len() > 300, "only {} goldens found", files.len());
    let mut failures = Vec::new();
    let mut resources = 0;
    for file in &files {
        match corpus::load(file) {
            Ok(decoded) => resources += decoded.len(),
            Err(e) => failures.push(e),
        }
    }
    println!("{} goldens, {resources} resources decoded", files.len());
    assert!(
        failures.is_empty(),
        "decode failures:\n{}",
        failures.join("\n")
    );
}
