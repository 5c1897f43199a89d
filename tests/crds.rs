//! The CRD YAML committed under manifests/crds/ is exactly what the Rust types generate.

// Test code: an unwrap, expect or panic stops the test where it failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crds");
    for (file, generated) in relaunch_api::crd_manifests() {
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        assert!(
            committed == generated,
            "manifests/crds/{file} is out of date; regenerate with: cargo run --bin relaunch-coordinator -- crds --dir manifests/crds"
        );
    }
}
