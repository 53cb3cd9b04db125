//! Checks of an `ImClusterSpec` beyond what the CRD schema enforces. Pure: it reads the
//! spec and returns every problem found; the operator reports them as `Degraded`.

use crate::spec::{ConnectionSource, ImClusterSpec, ReplicaBounds};

/// One problem in a spec, with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// An image reference is empty.
    #[error("{field}: image must not be empty")]
    MissingImage {
        /// The offending field.
        field: &'static str,
    },
    /// Replica bounds are negative, zero at the top, or crossed.
    #[error("{field}: need 0 <= min <= max and max >= 1, got min={min} max={max}")]
    BadReplicaBounds {
        /// The offending field.
        field: &'static str,
        /// Given minimum.
        min: i32,
        /// Given maximum.
        max: i32,
    },
    /// A port is outside 1..=65535 or two listeners share one.
    #[error("{field}: {detail}")]
    BadPort {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A connection source sets neither or both of url and secretRef, or a bad URL.
    #[error("{field}: {detail}")]
    BadConnection {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An autoscaling setting is out of range.
    #[error("autoscaling.{field}: {detail}")]
    BadAutoscaling {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Every problem found in a spec (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ImCluster spec: {}", join(.0))]
pub struct SpecErrors(pub Vec<SpecError>);

fn join(errors: &[SpecError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks a spec; `Ok` when the operator can build workloads from it.
pub fn validate(spec: &ImClusterSpec) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    check_image(&spec.gateway.image, "spec.gateway.image", &mut errors);
    check_image(&spec.logic.image, "spec.logic.image", &mut errors);
    check_bounds(spec.gateway.replicas, "spec.gateway.replicas", &mut errors);
    check_bounds(spec.logic.replicas, "spec.logic.replicas", &mut errors);

    let listeners = &spec.gateway.listeners;
    for (field, port) in [
        ("spec.gateway.listeners.tcpPort", listeners.tcp_port),
        (
            "spec.gateway.listeners.websocketPort",
            listeners.websocket_port,
        ),
    ] {
        if !(1..=65535).contains(&port) {
            errors.push(SpecError::BadPort {
                field,
                detail: format!("port {port} is outside 1..=65535"),
            });
        }
    }
    if listeners.tcp_port == listeners.websocket_port {
        errors.push(SpecError::BadPort {
            field: "spec.gateway.listeners",
            detail: format!("tcpPort and websocketPort are both {}", listeners.tcp_port),
        });
    }

    check_source(
        &spec.redis,
        "spec.redis",
        &["redis://", "rediss://"],
        &mut errors,
    );
    check_source(
        &spec.postgres,
        "spec.postgres",
        &["postgres://", "postgresql://"],
        &mut errors,
    );
    check_autoscaling(spec, &mut errors);

    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

fn check_image(image: &str, field: &'static str, errors: &mut Vec<SpecError>) {
    if image.trim().is_empty() {
        errors.push(SpecError::MissingImage { field });
    }
}

fn check_bounds(bounds: ReplicaBounds, field: &'static str, errors: &mut Vec<SpecError>) {
    if bounds.min < 0 || bounds.max < 1 || bounds.min > bounds.max {
        errors.push(SpecError::BadReplicaBounds {
            field,
            min: bounds.min,
            max: bounds.max,
        });
    }
}

fn check_source(
    source: &ConnectionSource,
    field: &'static str,
    schemes: &[&str],
    errors: &mut Vec<SpecError>,
) {
    match (&source.url, &source.secret_ref) {
        (Some(url), None) => {
            if !schemes.iter().any(|s| url.starts_with(s)) {
                errors.push(SpecError::BadConnection {
                    field,
                    detail: format!("url must start with one of {}", schemes.join(", ")),
                });
            }
        }
        (None, Some(secret)) => {
            if secret.name.is_empty() || secret.key.is_empty() {
                errors.push(SpecError::BadConnection {
                    field,
                    detail: "secretRef needs a name and a key".to_string(),
                });
            }
        }
        _ => errors.push(SpecError::BadConnection {
            field,
            detail: "set exactly one of url and secretRef".to_string(),
        }),
    }
}

fn check_autoscaling(spec: &ImClusterSpec, errors: &mut Vec<SpecError>) {
    let a = &spec.autoscaling;
    if !(0.0..=1.0).contains(&a.tolerance) {
        errors.push(SpecError::BadAutoscaling {
            field: "tolerance",
            detail: format!("{} is outside 0..=1", a.tolerance),
        });
    }
    if a.max_step == 0 {
        errors.push(SpecError::BadAutoscaling {
            field: "maxStep",
            detail: "must be at least 1".to_string(),
        });
    }
    if a.sync_period_seconds < 5 {
        errors.push(SpecError::BadAutoscaling {
            field: "syncPeriodSeconds",
            detail: "must be at least 5".to_string(),
        });
    }
    if a.target_connections_per_gateway == 0 || a.target_messages_per_second_per_logic == 0 {
        errors.push(SpecError::BadAutoscaling {
            field: "targets",
            detail: "targets must be at least 1".to_string(),
        });
    }
    if a.enabled
        && !(a.prometheus_url.starts_with("http://") || a.prometheus_url.starts_with("https://"))
    {
        errors.push(SpecError::BadAutoscaling {
            field: "prometheusUrl",
            detail: "must be an http:// or https:// URL".to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample_spec;

    #[test]
    fn sample_spec_is_valid() {
        assert_eq!(validate(&sample_spec()), Ok(()));
    }

    #[test]
    fn crossed_bounds_and_missing_image_are_both_reported() {
        let mut spec = sample_spec();
        spec.gateway.replicas.min = 5;
        spec.gateway.replicas.max = 2;
        spec.logic.image = " ".to_string();
        let errors = validate(&spec).expect_err("invalid").0;
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.contains(&SpecError::MissingImage {
            field: "spec.logic.image"
        }));
        assert!(errors.contains(&SpecError::BadReplicaBounds {
            field: "spec.gateway.replicas",
            min: 5,
            max: 2
        }));
    }

    #[test]
    fn connection_source_needs_exactly_one_location() {
        let mut spec = sample_spec();
        spec.redis.secret_ref = Some(crate::SecretKeyRef {
            name: "r".into(),
            key: "url".into(),
        });
        spec.postgres = ConnectionSource::url("mysql://db");
        let message = validate(&spec).expect_err("invalid").to_string();
        assert!(message.contains("spec.redis: set exactly one"), "{message}");
        assert!(
            message.contains("spec.postgres: url must start"),
            "{message}"
        );
    }

    #[test]
    fn same_ports_and_bad_autoscaling_are_rejected() {
        let mut spec = sample_spec();
        spec.gateway.listeners.websocket_port = spec.gateway.listeners.tcp_port;
        spec.autoscaling.enabled = true;
        spec.autoscaling.prometheus_url = "prometheus:9090".into();
        spec.autoscaling.tolerance = 1.5;
        let errors = validate(&spec).expect_err("invalid").0;
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
