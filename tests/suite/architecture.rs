//! The import boundary ARCHITECTURE.md promises: `src/verifier/` (and
//! `src/webhook/`, once it exists) knows no framework and nothing of the adapters
//! or the layer; only `src/adapters/` and the layer reach into frameworks. A file
//! that breaks it fails this test with the line that does.

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
