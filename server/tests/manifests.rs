//! The Kubernetes manifests (`server/deploy/kubernetes/`), validated offline: the
//! core objects with `kubernetes-validate --strict` against Kubernetes 1.33, the
//! custom resources with `validate-crds.mjs` and the models of the npm packages
//! `@kubernetes-models/*` pinned in `package.json`, Istio's mesh config snippet
//! with `validate-mesh-config.py` against the JSON Schema written for it in
//! `schemas/`. And each validator is shown to refuse a planted mistake, so a pass
//! means something.
//!
//! Needs Python 3 with `kubernetes-validate` (pip), and Node.js (20 or later)
//! with npm. The npm packages go into `deploy/kubernetes/node_modules/` (never
//! committed): CI installs them with `npm ci` first, and these tests run the same
//! `npm ci` when they are missing or not the versions `package.json` pins. Without
//! Python's module, Node.js or npm, or when `npm ci` fails (offline), these tests
//! fail, naming what is missing; they are never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The Kubernetes release the core objects are validated against: the oldest
/// that Envoy Gateway v1.9 supports (1.33 to 1.36).
const KUBERNETES: &str = "1.33.0";

/// Core objects only (`kubernetes-validate`).
const CORE: [&str; 2] = ["server.yaml", "secret.example.yaml"];

/// Custom resources only (`validate-crds.mjs`).
const CUSTOM: [&str; 3] = ["envoy-gateway.yaml", "traefik.yaml", "istio.yaml"];

/// Istio's mesh config snippet (`validate-mesh-config.py`).
const MESH_CONFIG: &str = "istio-mesh-config.yaml";

const PIP_INSTALL: &str = "python3 -m pip install kubernetes-validate==1.37.0";

/// Run in `deploy/kubernetes/`: installs exactly what `package-lock.json` names,
/// running no package's install scripts.
const NPM_CI: [&str; 4] = ["ci", "--ignore-scripts", "--no-audit", "--no-fund"];

/// The model packages and the versions `package.json` pins (`npm view` lists
/// them); README.md says which upstream release each tracks.
const NPM_PACKAGES: [(&str, &str); 5] = [
    ("@kubernetes-models/envoy-gateway", "2.0.0"),
    ("@kubernetes-models/gateway-api", "2.0.0"),
    ("@kubernetes-models/istio", "3.0.1"),
    ("@kubernetes-models/traefik", "2.0.0"),
    ("js-yaml", "5.5.0"),
];

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// `python3`, once it is known to have every module the validators import.
fn python() -> Command {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let probe = Command::new("python3")
            .args(["-c", "import jsonschema, kubernetes_validate, yaml"])
            .output()
            .map_err(|error| format!("cannot run python3: {error}"))?;
        if probe.status.success() {
            Ok(())
        } else {
            // The traceback's last line: which module is missing.
            let stderr = String::from_utf8_lossy(&probe.stderr).into_owned();
            Err(stderr.trim().lines().last().unwrap_or("").to_owned())
        }
    });
    if let Err(why) = ready {
        panic!(
            "the manifest tests need Python 3 with kubernetes-validate ({why}); \
             install it with: {PIP_INSTALL}"
        );
    }
    Command::new("python3")
}

/// `node` running `validate-crds.mjs` in `deploy/kubernetes/`, once the npm
/// packages `package.json` pins are installed there (by `npm ci` if need be).
fn validate_crds_command() -> Command {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let version = Command::new("node")
            .arg("--version")
            .output()
            .map_err(|error| format!("cannot run node ({error}): install Node.js 20 or later"))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let major: u32 = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .unwrap_or(0);
        if major < 20 {
            return Err(format!("node {version}: Node.js 20 or later is needed"));
        }
        let installed = || {
            Command::new("node")
                .args(["validate-crds.mjs", "--versions"])
                .current_dir(deploy())
                .output()
                .map_err(|error| format!("cannot run node: {error}"))
        };
        if installed()?.status.success() {
            return Ok(());
        }
        // Missing or stale: what .ci/run does.
        let npm = Command::new("npm")
            .args(NPM_CI)
            .current_dir(deploy())
            .output()
            .map_err(|error| format!("cannot run npm ({error}): install npm"))?;
        if !npm.status.success() {
            return Err(format!(
                "`npm {}` in {} failed (is the npm registry reachable?):\n{}{}",
                NPM_CI.join(" "),
                deploy().display(),
                String::from_utf8_lossy(&npm.stdout),
                String::from_utf8_lossy(&npm.stderr)
            ));
        }
        let check = installed()?;
        if check.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&check.stderr).into_owned())
        }
    });
    if let Err(why) = ready {
        panic!(
            "the manifest tests need Node.js 20 or later and npm, with the npm packages \
             of deploy/kubernetes/package.json installed (`cd server/deploy/kubernetes && \
             npm {}`): {why}",
            NPM_CI.join(" ")
        );
    }
    let mut command = Command::new("node");
    command.arg(deploy().join("validate-crds.mjs"));
    command
}

/// Exit status and stdout + stderr of a command.
fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().expect("the validator runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// `kubernetes-validate --strict` of `files`.
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    run(python()
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES])
        .args(files))
}

/// `validate-crds.mjs` of `files` (custom resources).
fn validate_crds(files: &[PathBuf]) -> (bool, String) {
    run(validate_crds_command().args(files))
}

/// `validate-mesh-config.py` of `files` (mesh config snippets).
fn validate_mesh_config(files: &[PathBuf]) -> (bool, String) {
    run(python()
        .arg(deploy().join("validate-mesh-config.py"))
        .args(files))
}

fn paths(names: &[&str]) -> Vec<PathBuf> {
    names.iter().map(|name| deploy().join(name)).collect()
}

/// A copy of the manifest `name` with `from` replaced by `to` once, in a
/// directory of its own.
fn planted(test: &str, name: &str, from: &str, to: &str) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(deploy().join(name)).unwrap();
    assert_eq!(text.matches(from).count(), 1, "{name} has {from:?} once");
    let dir = std::env::temp_dir().join(format!(
        "composio-auth-manifests-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text.replacen(from, to, 1)).unwrap();
    (dir, file)
}

/// `validate-crds.mjs` of a planted copy of `name`: it must fail, naming
/// `object` and then `error` (the field and what is wrong with it).
fn assert_validate_crds_refuses(
    test: &str,
    name: &str,
    from: &str,
    to: &str,
    object: &str,
    error: &str,
) {
    let (dir, file) = planted(test, name, from, to);
    let (ok, output) = validate_crds(&[file]);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(!ok, "{test}: validate-crds.mjs accepted it:\n{output}");
    let output = format!("\n{output}");
    let failure = output
        .split("\nFAIL ")
        .skip(1)
        .find(|block| block.contains(object))
        .unwrap_or_else(|| panic!("{test}: no FAIL for {object}:\n{output}"));
    assert!(
        failure.contains(error),
        "{test}: {error:?} not in:\n{output}"
    );
    assert_eq!(
        output.matches("\nFAIL ").count(),
        1,
        "{test}: only {object} fails:\n{output}"
    );
}

#[test]
fn the_core_objects_validate_strictly() {
    let (ok, output) = kubernetes_validate(&paths(&CORE));
    assert!(
        ok,
        "kubernetes-validate --strict -k {KUBERNETES}:\n{output}"
    );
    // A kind it has no schema for is only a warning: none here.
    assert!(
        !output.contains("WARN") && !output.contains("ERROR"),
        "{output}"
    );
    for kind in [
        "serviceaccount/composio-auth",
        "deployment/composio-auth",
        "service/composio-auth",
        "poddisruptionbudget/composio-auth",
        "secret/composio-auth",
    ] {
        assert!(
            output.contains(&format!("passed for resource {kind} against version 1.33")),
            "{kind}:\n{output}"
        );
    }
}

#[test]
fn the_custom_resources_validate_with_the_npm_models() {
    let (ok, output) = validate_crds(&paths(&CUSTOM));
    assert!(ok, "validate-crds.mjs:\n{output}");
    for object in [
        "gateway.networking.k8s.io/v1 HTTPRoute app/app [@kubernetes-models/gateway-api@2.0.0]",
        "gateway.networking.k8s.io/v1 HTTPRoute app/app-admin [@kubernetes-models/gateway-api@2.0.0]",
        "gateway.networking.k8s.io/v1 HTTPRoute app/composio-webhook [@kubernetes-models/gateway-api@2.0.0]",
        "gateway.envoyproxy.io/v1alpha1 SecurityPolicy app/composio-auth [@kubernetes-models/envoy-gateway@2.0.0]",
        "gateway.envoyproxy.io/v1alpha1 SecurityPolicy app/composio-auth-admin [@kubernetes-models/envoy-gateway@2.0.0]",
        "gateway.envoyproxy.io/v1alpha1 ClientTrafficPolicy app/composio-auth-identity [@kubernetes-models/envoy-gateway@2.0.0]",
        "traefik.io/v1alpha1 Middleware app/composio-auth [@kubernetes-models/traefik@2.0.0]",
        "traefik.io/v1alpha1 Middleware app/composio-auth-admin [@kubernetes-models/traefik@2.0.0]",
        "traefik.io/v1alpha1 IngressRoute app/app [@kubernetes-models/traefik@2.0.0]",
        "security.istio.io/v1 AuthorizationPolicy app/composio-auth [@kubernetes-models/istio@3.0.1]",
        "security.istio.io/v1 AuthorizationPolicy app/composio-webhook-from-relay [@kubernetes-models/istio@3.0.1]",
        "networking.istio.io/v1alpha3 EnvoyFilter app/composio-auth-identity [@kubernetes-models/istio@3.0.1]",
    ] {
        assert!(
            output
                .lines()
                .any(|line| line.starts_with("ok   ") && line.ends_with(object)),
            "{object}:\n{output}"
        );
    }
    assert!(!output.contains("FAIL"), "{output}");
    // The one field newer than its model, said so.
    assert!(
        output.contains(
            "note gateway.envoyproxy.io/v1alpha1 SecurityPolicy spec.extAuth.statusOnError"
        ),
        "{output}"
    );
    assert!(
        output.contains("custom resources: 12 of 12 valid"),
        "{output}"
    );
}

#[test]
fn the_mesh_config_validates_against_its_schema() {
    let (ok, output) = validate_mesh_config(&paths(&[MESH_CONFIG]));
    assert!(ok, "validate-mesh-config.py:\n{output}");
    assert!(
        output.contains("ok   ")
            && output.contains("mesh config, providers composio-auth, composio-auth-grpc"),
        "{output}"
    );
}

#[test]
fn every_manifest_is_validated_and_schemas_holds_only_hand_written_files() {
    let mut manifests: Vec<String> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    manifests.sort();
    let mut validated: Vec<String> = CORE
        .iter()
        .chain(&CUSTOM)
        .chain(&[MESH_CONFIG])
        .map(|name| (*name).to_owned())
        .collect();
    validated.sort();
    assert_eq!(manifests, validated);

    // The CRDs' schemas come from npm at test time: schemas/ holds only what was
    // written for this repository, each file described in its README.
    let schemas = deploy().join("schemas");
    let readme = std::fs::read_to_string(schemas.join("README.md")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&schemas)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            assert!(
                entry.path().is_file(),
                "schemas/ has a directory: {:?}",
                entry.path()
            );
            entry.file_name().into_string().unwrap()
        })
        .collect();
    files.sort();
    assert_eq!(files, ["README.md", "istio-mesh-config.schema.json"]);
    assert!(
        readme.contains("`istio-mesh-config.schema.json`"),
        "{readme}"
    );
    let schema = std::fs::read_to_string(schemas.join("istio-mesh-config.schema.json")).unwrap();
    assert!(schema.contains("Written for this repository"), "{schema}");
    assert!(!schema.contains("CustomResourceDefinition"));
}

#[test]
fn the_npm_packages_are_pinned_exactly() {
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(deploy().join(name)).unwrap()).unwrap()
    };
    let manifest = read("package.json");
    let lock = read("package-lock.json");
    let dependencies = manifest["dependencies"].as_object().unwrap();
    assert_eq!(dependencies.len(), NPM_PACKAGES.len(), "{dependencies:?}");
    for (name, version) in NPM_PACKAGES {
        assert_eq!(dependencies[name], version, "package.json pins {name}");
        assert_eq!(
            lock["packages"][""]["dependencies"][name], version,
            "package-lock.json is package.json's (npm install --package-lock-only)"
        );
        assert_eq!(
            lock["packages"][format!("node_modules/{name}")]["version"],
            version,
            "package-lock.json locks {name}"
        );
    }
    // Every package of the lock has its integrity hash, which npm ci checks.
    for (path, package) in lock["packages"].as_object().unwrap() {
        if !path.is_empty() {
            assert!(
                package["integrity"]
                    .as_str()
                    .is_some_and(|hash| hash.starts_with("sha512-")),
                "{path}"
            );
        }
    }
}

#[test]
fn kubernetes_validate_refuses_a_planted_unknown_field() {
    let (dir, file) = planted(
        "core",
        "server.yaml",
        "          image: registry.example.com/",
        "          pullPolicy: Always\n          image: registry.example.com/",
    );
    let (ok, output) = kubernetes_validate(&[file]);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(!ok, "{output}");
    assert!(
        output.contains("deployment/composio-auth")
            && output.contains("'pullPolicy' was unexpected"),
        "{output}"
    );
}

#[test]
fn validate_crds_refuses_a_planted_unknown_field() {
    // validate() of the models lets it pass; validate-crds.mjs does not.
    assert_validate_crds_refuses(
        "unknown-field",
        "traefik.yaml",
        "    address: \"http://composio-auth.app.svc.cluster.local:8080/verify\"\n",
        "    adress: \"http://composio-auth.app.svc.cluster.local:8080/verify\"\n",
        "traefik.io/v1alpha1 Middleware app/composio-auth ",
        "spec.forwardAuth.adress: unknown field",
    );
    assert_validate_crds_refuses(
        "unknown-metadata",
        "istio.yaml",
        "  name: composio-webhook-from-relay\n",
        "  name: composio-webhook-from-relay\n  label:\n    app: app\n",
        "security.istio.io/v1 AuthorizationPolicy app/composio-webhook-from-relay",
        "metadata.label: unknown field",
    );
}

#[test]
fn validate_crds_refuses_planted_invalid_values() {
    // One per model package: an enum, a type, and the hand check of the field
    // newer than its model.
    assert_validate_crds_refuses(
        "gateway-api",
        "envoy-gateway.yaml",
        "{ type: Exact, value: /composio/webhook }",
        "{ type: Exactly, value: /composio/webhook }",
        "gateway.networking.k8s.io/v1 HTTPRoute app/composio-webhook",
        "spec.rules[0].matches[0].path.type: must be equal to one of the allowed values",
    );
    assert_validate_crds_refuses(
        "envoy-gateway",
        "envoy-gateway.yaml",
        "        type: Value\n",
        "        type: Literal\n",
        "gateway.envoyproxy.io/v1alpha1 SecurityPolicy app/composio-auth-admin",
        "spec.extAuth.contextExtensions[0].type: must be equal to one of the allowed values",
    );
    assert_validate_crds_refuses(
        "envoy-gateway-newer",
        "envoy-gateway.yaml",
        "    statusOnError: 503\n    timeout: 6s\n    # Only these",
        "    statusOnError: \"503\"\n    timeout: 6s\n    # Only these",
        "gateway.envoyproxy.io/v1alpha1 SecurityPolicy app/composio-auth ",
        "spec.extAuth.statusOnError: must be an HTTP status code from 400 to 599",
    );
    assert_validate_crds_refuses(
        "traefik",
        "traefik.yaml",
        "    address: \"http://composio-auth.app.svc.cluster.local:8080/verify\"\n",
        "    address: \"http://composio-auth.app.svc.cluster.local:8080/verify\"\n    trustForwardHeader: \"yes\"\n",
        "traefik.io/v1alpha1 Middleware app/composio-auth ",
        "spec.forwardAuth.trustForwardHeader: must be boolean",
    );
    assert_validate_crds_refuses(
        "istio",
        "istio.yaml",
        "  action: CUSTOM\n",
        "  action: EXTERNAL\n",
        "security.istio.io/v1 AuthorizationPolicy app/composio-auth ",
        "spec.action: must be equal to one of the allowed values",
    );
}

#[test]
fn validate_crds_refuses_an_object_it_has_no_model_for() {
    let (ok, output) = validate_crds(&paths(&["server.yaml"]));
    assert!(!ok, "{output}");
    assert!(
        output.contains("FAIL ")
            && output.contains("apps/v1 Deployment app/composio-auth")
            && output.contains("no model for apiVersion apps/v1"),
        "{output}"
    );
}

#[test]
fn validate_mesh_config_refuses_a_mesh_config_istio_would_not_read() {
    // A protobuf Duration is seconds: "0.5s", never "500ms".
    let (dir, file) = planted(
        "mesh",
        MESH_CONFIG,
        "        port: 8081\n        timeout: 6s\n",
        "        port: 8081\n        timeout: 500ms\n",
    );
    let (ok, output) = validate_mesh_config(&[file]);
    std::fs::remove_dir_all(dir).unwrap();
    assert!(!ok, "{output}");
    assert!(
        output.contains(
            "meshConfig.extensionProviders[1].envoyExtAuthzGrpc.timeout: '500ms' does not match"
        ),
        "{output}"
    );
}

/// As the recipes do: every proxy lets the app see only the server's identity
/// headers, passes the credential headers, the selectors and the trace context,
/// and leaves the webhook path without forward auth.
#[test]
fn every_proxy_clears_the_eleven_identity_headers_and_exempts_the_webhook() {
    let read = |name: &str| std::fs::read_to_string(deploy().join(name)).unwrap();
    let identity = [
        "project-id",
        "project-name",
        "org-id",
        "org-name",
        "org-plan",
        "api-key-id",
        "member-id",
        "member-email",
        "member-name",
        "member-role",
        "user-id",
    ];
    let count = |text: &str, header: &str| {
        text.to_ascii_lowercase()
            .matches(&format!("x-composio-{header}\n"))
            .count()
    };
    for header in identity {
        // Envoy Gateway: headersToBackend and the early removal.
        assert_eq!(count(&read("envoy-gateway.yaml"), header), 2, "{header}");
        // Traefik: authResponseHeaders of both middlewares.
        assert_eq!(count(&read("traefik.yaml"), header), 2, "{header}");
        // Istio: the EnvoyFilter's removal, and headersToUpstreamOnAllow.
        assert_eq!(count(&read("istio.yaml"), header), 1, "{header}");
        assert_eq!(count(&read(MESH_CONFIG), header), 1, "{header}");
    }
    for name in CUSTOM.iter().chain(&["server.yaml"]) {
        assert!(read(name).contains("/composio/webhook"), "{name}");
    }
    for name in ["envoy-gateway.yaml", "traefik.yaml", MESH_CONFIG] {
        let text = read(name).to_ascii_lowercase();
        for header in [
            "x-api-key",
            "x-user-api-key",
            "x-org-api-key",
            "x-org-id",
            "x-project-id",
            "traceparent",
        ] {
            assert!(
                text.contains(&format!("- {header}\n")),
                "{name} passes {header}"
            );
        }
    }
}
