//! Writes the ImCluster CRD YAML to `charts/im-operator/crds/imcluster.yaml` (or to the path
//! given as the first argument, `-` for stdout).

use std::{io::Write, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let yaml = match im_crds::crd_yaml() {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = std::env::args().nth(1).map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(im_crds::CRD_PATH)
        },
        PathBuf::from,
    );
    let result = if target.as_os_str() == "-" {
        std::io::stdout().write_all(yaml.as_bytes())
    } else {
        std::fs::write(&target, yaml)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: failed to write {}: {e}", target.display());
            ExitCode::FAILURE
        }
    }
}
