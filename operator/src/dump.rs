//! Renders the built children of an ImCluster as YAML files (for offline validation).
//! Only file IO; the objects come from [`crate::build`].

use std::path::{Path, PathBuf};

use im_crds::ImCluster;

use crate::build::{self, DesiredReplicas};

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Reading or writing a file failed.
    #[error("failed to access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The input ImCluster is not valid YAML of the right shape.
    #[error("failed to parse the ImCluster YAML")]
    Parse(#[source] serde_saphyr::Error),
    /// YAML rendering failed.
    #[error("failed to render an object as YAML")]
    Render(#[source] serde_saphyr::SerializeError),
    /// The objects could not be built.
    #[error(transparent)]
    Build(#[from] build::BuildError),
}

/// Builds the children of `input` (or of the built-in sample) at their minimum replica
/// counts and writes one YAML file per object into `out`. Returns the files written.
pub fn dump_to_dir(out: &Path, input: Option<&Path>) -> Result<Vec<PathBuf>, DumpError> {
    let mut imc = match input {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| DumpError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            serde_saphyr::from_str::<ImCluster>(&text).map_err(DumpError::Parse)?
        }
        None => ImCluster::new("example", im_crds::sample_spec()),
    };
    if imc.metadata.namespace.is_none() {
        imc.metadata.namespace = Some("default".into());
    }
    // The API server assigns a uid; a fixed one makes the dump reproducible.
    imc.metadata.uid = Some("00000000-0000-4000-8000-000000000000".into());
    let replicas = DesiredReplicas {
        gateway: imc.spec.gateway.replicas.min,
        logic: imc.spec.logic.replicas.min,
    };
    let children = build::build_children(&imc, replicas)?;
    std::fs::create_dir_all(out).map_err(|source| DumpError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let mut write = |file: &str, yaml: Result<String, serde_saphyr::SerializeError>| {
        let path = out.join(file);
        let yaml = yaml.map_err(DumpError::Render)?;
        std::fs::write(&path, yaml).map_err(|source| DumpError::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
        Ok::<(), DumpError>(())
    };
    // k8s-openapi types serialize their own apiVersion and kind.
    use serde_saphyr::to_string as yaml;
    write("serviceaccount.yaml", yaml(&children.service_account))?;
    for (component, objects) in [("gateway", &children.gateway), ("logic", &children.logic)] {
        write(
            &format!("{component}-configmap.yaml"),
            yaml(&objects.config_map),
        )?;
        write(
            &format!("{component}-deployment.yaml"),
            yaml(&objects.deployment),
        )?;
        write(&format!("{component}-service.yaml"), yaml(&objects.service))?;
        write(&format!("{component}-pdb.yaml"), yaml(&objects.pdb))?;
    }
    write(
        "logic-headless-service.yaml",
        yaml(&children.logic_headless),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_writes_every_child_with_api_version_and_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = dump_to_dir(dir.path(), None).expect("dump");
        assert_eq!(files.len(), 10);
        let deployment =
            std::fs::read_to_string(dir.path().join("gateway-deployment.yaml")).expect("read");
        assert!(deployment.contains("apiVersion: apps/v1"), "{deployment}");
        assert!(deployment.contains("kind: Deployment"), "{deployment}");
        let headless =
            std::fs::read_to_string(dir.path().join("logic-headless-service.yaml")).expect("read");
        assert!(headless.contains("kind: Service"), "{headless}");
        assert!(headless.contains("clusterIP: None"), "{headless}");
    }
}
