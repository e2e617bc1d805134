//! Every conformance-vector file is reproduced to 1e-4.
//!
//! Files are read from the repository's own copy (`tests/data/vectors`), from
//! `../shared/vectors` beside the checkout when it exists, and from
//! `$G2PO_VECTORS` when set; a file dropped into any of them is picked up
//! without code changes. Each file must compare at least one row and every
//! field its `expected` rows carry.

use std::path::{Path, PathBuf};

use g2po::{AdvantageEstimator, Estimator};

fn vector_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("tests/data/vectors")];
    let shared = root.join("../shared/vectors");
    if shared.is_dir() {
        dirs.push(shared);
    }
    if let Some(dir) = std::env::var_os("G2PO_VECTORS") {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("conformance vectors not readable at {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Number of (row, field) values a file's `expected` rows hold, read
/// independently of the crate's own reader.
fn expected_value_count(file: &Path) -> usize {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let rows = doc["expected"].as_array().unwrap_or_else(|| panic!("{}: no expected array", file.display()));
    rows.iter().map(|r| r.as_object().map_or(0, |o| o.len())).sum()
}

#[test]
fn every_vector_file_is_reproduced() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in vector_dirs() {
        let files = json_files(&dir);
        assert!(!files.is_empty(), "no *.json vector files in {}", dir.display());
        for file in &files {
            let input = g2po::io::read_path(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let header = input.header.unwrap_or_else(|| panic!("{} is not a vector file", file.display()));
            assert!(!header.expected.is_empty(), "{} has no expected rows", file.display());
            let adv = Estimator::new(header.config).unwrap().estimate(&input.batch).unwrap();
            let cmp = g2po::io::compare(&adv, &header.expected);
            println!(
                "{}: {} values, max abs error {:.2e} at {:?}",
                file.display(),
                cmp.compared,
                cmp.max_abs_error,
                cmp.worst
            );
            let want = expected_value_count(file);
            if cmp.compared != want {
                failures.push(format!("{}: compared {} of {want} expected values", file.display(), cmp.compared));
            }
            if !cmp.passes(1e-4) {
                failures.push(format!("{}: {cmp:?}", file.display()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} vector files checked");
    assert!(failures.is_empty(), "conformance failures:\n{}", failures.join("\n"));
}
