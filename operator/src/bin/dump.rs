//! Writes the objects the operator builds for the chart's example ImCluster as YAML files
//! into a folder, so `scripts/operator-checks.sh` can validate them offline.
//!
//! Usage: `im-operator-dump <out-dir> [imcluster.yaml]`

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!("usage: im-operator-dump <out-dir> [imcluster.yaml]");
        return ExitCode::from(2);
    };
    let input = args.next().map(PathBuf::from);
    match im_operator::dump::dump_to_dir(&out, input.as_deref()) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("im-operator-dump: {e}");
            ExitCode::FAILURE
        }
    }
}
