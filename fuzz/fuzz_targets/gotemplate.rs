//! The Go-template subset VirtualOutbound `host` and `port` templates are parsed with
//! (`bearing_model::gotemplate::Template`), a file-controlled input.
//!
//! Properties: text without an action parses and renders to itself; an error is not empty;
//! keys the template does not use change nothing; a value is output as given, never read as
//! template text; an action put in front of a template does not change how the rest parses or
//! renders.
#![no_main]

use std::collections::BTreeMap;

use bearing_model::gotemplate::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let prefixed = format!("{{{{.fz}}}}{text}");
    let template = match Template::parse(text) {
        Ok(t) => t,
        Err(message) => {
            assert!(!message.is_empty());
            assert!(
                text.contains("{{"),
                "text without an action refused: {message}"
            );
            assert!(Template::parse(&prefixed).is_err(), "{prefixed:?} parses");
            return;
        }
    };
    let plain = template.render(&BTreeMap::new());
    if !text.contains("{{") {
        assert_eq!(plain, text);
    }
    let unused = BTreeMap::from([("-", "x"), ("fz", "{{.fz}}")]);
    let with_unused = template.render(&unused);
    let Ok(front) = Template::parse(&prefixed) else {
        panic!("{text:?} parses but {prefixed:?} does not");
    };
    assert_eq!(front.render(&unused), format!("{{{{.fz}}}}{with_unused}"));
    if !text.contains(".fz") {
        assert_eq!(with_unused, plain);
    }
});
