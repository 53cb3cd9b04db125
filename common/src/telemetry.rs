//! Tracing set-up and build identity for binaries; libraries only emit events.
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: level from `RUST_LOG` (default `info`), JSON when asked.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// What a binary is: its name, its package's version and the commit it was
/// built from. Made by [`build!`](crate::build) in the binary's own package,
/// whose build script (`common/build_commit.rs`) sets `IM_COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    pub binary: &'static str,
    pub version: &'static str,
    pub commit: &'static str,
}

impl Build {
    /// Sets `im_build_info{binary, version, commit}` to 1 in the default
    /// registry, so that a dashboard can tell which builds serve (during a
    /// roll, two). Idempotent.
    pub fn register(&self) {
        static INFO: std::sync::LazyLock<prometheus::IntGaugeVec> = std::sync::LazyLock::new(
            || {
                prometheus::register_int_gauge_vec!(
                    "im_build_info",
                    "Always 1, labelled with the binary, its version and the commit it was built from",
                    &["binary", "version", "commit"]
                )
                .expect("register im_build_info")
            },
        );
        INFO.with_label_values(&[self.binary, self.version, self.commit])
            .set(1);
    }
}

/// The calling package's [`Build`]: `build!("im-gateway")`. Needs the
/// package's build script to be `../common/build_commit.rs`.
#[macro_export]
macro_rules! build {
    ($binary:literal) => {
        $crate::telemetry::Build {
            binary: $binary,
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("IM_COMMIT"),
        }
    };
}

/// `VERSION (COMMIT)` of the calling package, for clap's `--version`.
#[macro_export]
macro_rules! version {
    () => {
        concat!(env!("CARGO_PKG_VERSION"), " (", env!("IM_COMMIT"), ")")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_is_one_labelled_series() {
        let build = Build {
            binary: "im-test",
            version: "1.2.3",
            commit: "0123456789ab",
        };
        build.register();
        build.register();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&prometheus::gather())
            .expect("encode");
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("im_build_info{"))
            .collect();
        assert_eq!(
            series,
            ["im_build_info{binary=\"im-test\",commit=\"0123456789ab\",version=\"1.2.3\"} 1"]
        );
    }
}
