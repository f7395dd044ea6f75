//! `--format` is user input: whatever the template and whatever the document, parsing and
//! rendering return a value or an error, and never panic or run away.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // A template, then optionally a NUL and the JSON document it is applied to.
    let (source, document) =
        text.split_once('\0').unwrap_or((text, r#"{"Names":["web"],"State":{"Status":"running"},"Ports":[1,2]}"#));
    let Ok(data) = serde_json::from_str::<serde_json::Value>(document) else { return };
    if let Ok(template) = gotemplate::Template::parse(source) {
        if let Ok(line) = template.render(&data) {
            let _ = gotemplate::align_columns(&[line]);
        }
        let _ = template.header(&[("Names", "NAMES")]);
    }
    let _ = gotemplate::Format::parse(source);
});
