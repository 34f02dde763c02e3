//! Replays every committed fuzz input (fuzz/corpus/<target>/*) through the checks its
//! target runs, on stable Rust: a crash the fuzzer found once stays fixed.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut failed = Vec::new();
    for (target, check) in chatd_fuzz_checks::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no seeds for {target} in {}",
            dir.display()
        );
        for file in &files {
            let data = std::fs::read(file).expect("a corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(file.display().to_string());
            }
        }
        println!("{target}: {} inputs replayed", files.len());
    }
    assert!(
        failed.is_empty(),
        "inputs failing their checks: {failed:#?}"
    );
}
