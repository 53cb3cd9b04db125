//! Fails when the committed CRD YAML differs from the one the Rust types generate, and
//! checks the generated schema carries the rules, columns and names the docs promise.

use std::path::PathBuf;

use kube::CustomResourceExt;

fn committed() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(im_crds::CRD_PATH);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn committed_crd_matches_generated() {
    let generated = im_crds::crd_yaml().expect("render");
    assert!(
        committed() == generated,
        "{} is stale: run `cargo run -p im-crds --bin crdgen`",
        im_crds::CRD_PATH
    );
}

#[test]
fn crd_has_names_columns_and_status_subresource() {
    let crd = im_crds::ImCluster::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("imclusters.im.dev"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["imc".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Gateways", "Logic", "Connections", "Ready", "Age"]
    );
}

#[test]
fn schema_carries_cel_rules_and_required_images() {
    let yaml = im_crds::crd_yaml().expect("render");
    for rule in [
        "self.min <= self.max",
        "has(self.url) != has(self.secretRef)",
        "self.tcpPort != self.websocketPort",
    ] {
        assert!(yaml.contains(rule), "missing CEL rule {rule}");
    }
    let crd = serde_json::to_value(im_crds::ImCluster::crd()).expect("json");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let gateway = &spec["properties"]["gateway"];
    assert!(
        gateway["required"]
            .as_array()
            .expect("required list")
            .contains(&serde_json::json!("image"))
    );
    assert_eq!(gateway["properties"]["image"]["minLength"], 1);
}
