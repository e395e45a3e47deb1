//! A store file as `bearing validate` and the directory store read it
//! (`bearing_model::Store::add_text`: YAML documents, typed resources, validation).
//!
//! Properties: every problem and every resource points at a line of the file and a problem
//! says what is wrong.
//! libFuzzer's `-rss_limit_mb`/`-malloc_limit_mb` and `-timeout` catch unbounded expansion
//! (alias bombs) and blow-ups. Pending (skippable): a file holding NUL is refused (`nul`);
//! alias expansion is bounded (`alias`: when skipped, inputs with aliases are not run).
#![no_main]

use std::path::Path;

use bearing_fuzz::skipped;
use bearing_model::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if skipped("alias") && text.contains('*') {
        return;
    }
    let mut store = Store::default();
    store.add_text(text, Path::new("fuzz.yaml"));
    let lines = text.split('\n').count();
    for problem in &store.problems {
        assert!(!problem.message.is_empty());
        assert!(
            problem.line <= lines,
            "{problem} is past the last line ({lines})"
        );
        assert_eq!(problem.file, Path::new("fuzz.yaml"));
    }
    for resource in &store.resources {
        assert!(
            (1..=lines).contains(&resource.origin.line),
            "{} at line {}",
            resource.key(),
            resource.origin.line
        );
    }
    if !skipped("nul") && text.contains('\0') {
        assert!(!store.problems.is_empty(), "a file holding NUL is accepted");
    }
});
