//! Every file in the conformance-vector folder is reproduced to 1e-4.
//!
//! The folder is `$G2PO_VECTORS`, else `../shared/vectors` beside the
//! checkout (where CI has it). New files are picked up without code changes.

use std::path::PathBuf;

use g2po::{AdvantageEstimator, Estimator};

fn vectors_dir() -> PathBuf {
    match std::env::var_os("G2PO_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"),
    }
}

#[test]
fn every_vector_file_is_reproduced() {
    let dir = vectors_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance vectors not found at {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.json vector files in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let input = g2po::io::read_path(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let header = input.header.unwrap_or_else(|| panic!("{} is not a vector file", file.display()));
        assert!(!header.expected.is_empty(), "{} has no expected rows", file.display());
        let adv = Estimator::new(header.config).unwrap().estimate(&input.batch).unwrap();
        let cmp = g2po::io::compare(&adv, &header.expected);
        println!(
            "{}: {} values, max abs error {:.2e} at {:?}",
            file.file_name().unwrap().to_string_lossy(),
            cmp.compared,
            cmp.max_abs_error,
            cmp.worst
        );
        if !cmp.passes(1e-4) {
            failures.push(format!("{}: {cmp:?}", file.display()));
        }
    }
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}
