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
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") || code.starts_with("#[cfg") {
                continue;
            }
            for name in FORBIDDEN {
                if names(code, name) {
                    found.push(format!("{}:{}: {name}", file.display(), number + 1));
                }
            }
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
        "// crate::adapters in a comment is fine\n#[cfg(feature = \"axum\")]\nuse crate::adapters::tower::service;\n",
    )
    .unwrap();
    let found = violations(&root);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("bad.rs:3: crate::adapters"), "{found:?}");
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
