//! What ARCHITECTURE.md promises about the code's shape, checked on the source:
//! the import boundary (`src/verifier/`, and `src/webhook/` once it exists, knows
//! no framework and nothing of the adapters or the layer), one definition per type
//! name in `src/`, and no function over 80 lines in `src/` and `server/src/`. A file
//! that breaks one fails a test here with the line that does.

use std::path::{Path, PathBuf};

/// What a framework-free file must not name: the adapters, the layer, the tower
/// body types, and every framework crate.
const FORBIDDEN: &[&str] = &[
    "crate::adapters",
    "crate::layer",
    "crate::body",
    "crate::testing",
    "crate::ComposioAuth",
    "crate::ResponseFuture",
    "crate::MissingSession",
    "axum_core::",
    "axum::",
    "actix_web::",
    "tonic::",
    "tower_layer::",
    "tower_service::",
    "tower::",
    "hyper::",
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// `code` names `name` as a path of its own: not inside a longer identifier or path
/// (`crate::adapters::tower::service` names `crate::adapters`, not `tower::`).
fn names(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

/// The crate's own modules and items a framework-free file must not reach by any
/// path: `crate::{adapters, ..}` groups and `super::super::layer` chains included.
const FORBIDDEN_IN_CRATE: &[&str] = &[
    "adapters",
    "layer",
    "body",
    "testing",
    "ComposioAuth",
    "ResponseFuture",
    "MissingSession",
];

/// The identifier at the start of `text`.
fn first_identifier(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The forbidden crate modules `text` (a whole file, comments removed) reaches
/// through a `crate::{..}` group or a `super::` chain, with their line numbers.
fn reached_indirectly(text: &str) -> Vec<(usize, &'static str)> {
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::{") {
        // The group's items at its own depth: `crate::{a::b, c::{d, e}}` is `a`, `c`.
        let group = &text[at + "crate::{".len()..];
        let mut depth = 0;
        let mut items = vec![group];
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => items.push(&group[i + 1..]),
                _ => {}
            }
        }
        for item in items {
            let name = first_identifier(item);
            if let Some(forbidden) = FORBIDDEN_IN_CRATE.iter().find(|f| **f == name) {
                found.push((line_of(at), *forbidden));
            }
        }
    }
    for (at, _) in text.match_indices("super::") {
        let mut rest = &text[at..];
        while let Some(next) = rest.strip_prefix("super::") {
            rest = next;
        }
        let name = first_identifier(rest);
        if let Some(forbidden) = FORBIDDEN_IN_CRATE.iter().find(|f| **f == name) {
            found.push((line_of(at), *forbidden));
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// Every line of the framework-free folders that names something forbidden
/// (comments and `cfg` attributes aside: they may mention a feature's name).
fn violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for folder in ["src/verifier", "src/webhook"] {
        rust_files(&root.join(folder), &mut files);
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        // Comments and `cfg` attributes blanked, lines kept in place.
        let code: Vec<&str> = text
            .lines()
            .map(|line| {
                let code = line.trim_start();
                if code.starts_with("//") || code.starts_with("#[cfg") {
                    ""
                } else {
                    code
                }
            })
            .collect();
        for (number, line) in code.iter().enumerate() {
            for name in FORBIDDEN {
                if names(line, name) {
                    found.push(format!("{}:{}: {name}", file.display(), number + 1));
                }
            }
        }
        for (number, name) in reached_indirectly(&code.join("\n")) {
            found.push(format!("{}:{number}: {name}", file.display()));
        }
    }
    found
}

#[test]
fn the_verifier_imports_no_framework_adapter_or_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/verifier"), &mut files);
    assert!(files.len() > 10, "src/verifier/ was not found");
    let found = violations(root);
    assert!(
        found.is_empty(),
        "framework-free code names:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_a_forbidden_import() {
    let root = std::env::temp_dir().join(format!("composio-auth-boundary-{}", std::process::id()));
    let verifier = root.join("src/verifier/inner");
    std::fs::create_dir_all(&verifier).unwrap();
    std::fs::write(
        verifier.join("bad.rs"),
        "// crate::adapters in a comment is fine\n#[cfg(feature = \"axum\")]\nuse crate::adapters::tower::service;\n\
         use crate::{\n    verifier::cache,\n    layer::ComposioAuthLayer,\n};\n\
         use super::super::body::ResponseBody;\nuse crate::{verifier::{a, b}, Error};\n",
    )
    .unwrap();
    let found = violations(&root);
    std::fs::remove_dir_all(&root).unwrap();
    let lines: Vec<_> = found
        .iter()
        .map(|f| f.rsplit("bad.rs:").next().unwrap())
        .collect();
    assert_eq!(
        lines,
        ["3: crate::adapters", "4: layer", "8: body"],
        "{found:?}"
    );
}

/// The type names `src/` defines (`struct`, `enum`, `union`, `trait` and `type`
/// aliases; associated types in impls are not definitions), with where.
fn type_definitions(root: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for line in text.lines() {
            let mut words = line.split_whitespace().peekable();
            if words.peek().is_some_and(|w| w.starts_with("pub")) {
                words.next();
            }
            let (Some(kind), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // An associated type (`type Error = ...;` in an impl) is indented and
            // has no visibility of its own.
            let associated =
                kind == "type" && line.starts_with(char::is_whitespace) && !line.contains("pub");
            if ["struct", "enum", "union", "trait", "type"].contains(&kind)
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                && !associated
            {
                found.push((name, file.display().to_string()));
            }
        }
    }
    found
}

#[test]
fn no_type_name_is_defined_twice() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut definitions = type_definitions(root);
    assert!(
        definitions.len() > 40,
        "too few types found: {definitions:?}"
    );
    definitions.sort();
    let twice: Vec<_> = definitions
        .windows(2)
        .filter(|pair| pair[0].0 == pair[1].0)
        // tower's convention: one `ResponseFuture` per middleware; and the cfg
        // alternatives of one type, written side by side in one file.
        .filter(|pair| pair[0].0 != "ResponseFuture" && pair[0].1 != pair[1].1)
        .map(|pair| format!("{} in {} and {}", pair[0].0, pair[0].1, pair[1].1))
        .collect();
    assert!(
        twice.is_empty(),
        "type names defined twice:\n{}",
        twice.join("\n")
    );
}

/// Functions longer than `limit` lines (from `fn` to its closing brace at the same
/// indentation) in the `.rs` files under `dirs`.
fn long_functions(root: &Path, dirs: &[&str], limit: usize) -> Vec<String> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let lines: Vec<&str> = text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let indent = &line[..line.len() - code.len()];
            let signature = code
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("const ")
                .trim_start_matches("async ");
            if !signature.starts_with("fn ") || code.ends_with(';') {
                continue;
            }
            let closing = format!("{indent}}}");
            let end = lines[start..]
                .iter()
                .position(|l| *l == closing)
                .map_or(lines.len(), |n| start + n);
            if end - start + 1 > limit {
                found.push(format!(
                    "{}:{} ({} lines)",
                    file.display(),
                    start + 1,
                    end - start + 1
                ));
            }
        }
    }
    found
}

#[test]
fn no_function_is_over_80_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = long_functions(root, &["src", "server/src"], 80);
    assert!(
        found.is_empty(),
        "functions over 80 lines:\n{}",
        found.join("\n")
    );
    // The check sees a long function: a limit of 10 finds some.
    assert!(!long_functions(root, &["src"], 10).is_empty());
}
