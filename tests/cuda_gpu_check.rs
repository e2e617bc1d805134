//! `scripts/gpu-check.sh` against a fake bundle, so that its bookkeeping is proven here and the
//! one call on a GPU machine is spent on measuring, not on debugging the script.
//!
//! The fake bundle has the layout `scripts/gpu-build.sh` writes (manifest.tsv, bin/, tests/,
//! bench/), with shell scripts in place of the executables that print what the real ones print
//! (libtest's summary, the figures program's JSON lines and table rows, `g2po train`'s JSONL
//! log). A fake `nvidia-smi` on `PATH` stands for a GPU. Checked: a clean run passes every part
//! and assembles the figures; without a GPU every part skips and the run passes, unless
//! `G2PO_REQUIRE_GPU=1`, which fails at once; a failing test is named; a hanging part is cut
//! off by its own limit and the parts after it still run; the figures program's skip counts as
//! a skip, or as a failure when it exits non-zero.
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the fake executables behave.
#[derive(Clone, Copy, Default)]
struct Fake {
    /// The GPU test executable reports a failed test.
    failing_test: bool,
    /// `bench/gpu loss` never returns.
    hanging_loss: bool,
    /// `bench/gpu` says it skipped (no GPU), exiting 0, or 1 with G2PO_REQUIRE_GPU=1, as the
    /// real one does.
    figures_skip: bool,
    /// A GPU test passes by skipping: its marker shows in libtest's `--show-output` section.
    test_skips: bool,
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_exe(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A fresh scratch folder with a fake bundle in `bundle/` and a fake `nvidia-smi` in `fakebin/`.
fn fake_bundle(name: &str, fake: Fake) -> Scratch {
    let root = std::env::temp_dir().join(format!("g2po-gpu-check-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let b = root.join("bundle");
    fs::create_dir_all(b.join("lib")).unwrap();
    fs::write(
        b.join("manifest.tsv"),
        "kind\tname\tpath\tbytes\nbin\tg2po\tbin/g2po\t1\ntest\tcuda_gpu\ttests/cuda_gpu\t1\n\
         test\tcuda_nvrtc\ttests/cuda_nvrtc\t1\nbench\tgpu\tbench/gpu\t1\n",
    )
    .unwrap();
    fs::write(b.join("build-info.txt"), "commit: 0123abc (fake)\n").unwrap();
    let ok_tests = "echo 'running 2 tests'\necho 'test a ... ok'\necho 'test b ... ok'\n\
                    echo\necho 'test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out'\n";
    write_exe(&b.join("tests/cuda_nvrtc"), ok_tests);
    if fake.test_skips {
        write_exe(
            &b.join("tests/cuda_gpu"),
            "[ \"$1\" = --show-output ] || exit 3\necho 'test stages_gpu_match_engine ... ok'\n\
             echo 'successes:'\necho '---- stages_gpu_match_engine stdout ----'\n\
             echo 'SKIPPED (needs a CUDA GPU): no usable CUDA device'\n\
             echo 'test result: ok. 1 passed; 0 failed; 0 ignored'\n",
        );
    } else if fake.failing_test {
        write_exe(
            &b.join("tests/cuda_gpu"),
            "echo 'test a ... ok'\necho 'test stages_gpu_match_engine ... FAILED'\n\
             echo 'test result: FAILED. 1 passed; 1 failed; 0 ignored'\nexit 101\n",
        );
    } else {
        write_exe(&b.join("tests/cuda_gpu"), ok_tests);
    }
    let hang = if fake.hanging_loss { "[ \"$1\" = loss ] && sleep 60\n" } else { "" };
    let figures = if fake.figures_skip {
        format!(
            // The reason holds JSON-escaped quotes, as the driver's error text does.
            r#"{hang}if [ "$G2PO_REQUIRE_GPU" = 1 ]; then echo 'G2PO_REQUIRE_GPU=1 but no usable CUDA GPU' >&2; exit 1; fi
echo '{{"part":"'"$1"'","skipped":"no GPU: fake DriverError(\"x\")"}}'
"#
        )
    } else {
        format!(
            "{hang}echo \"{{\\\"part\\\":\\\"$1\\\",\\\"ms\\\":1.5}}\"\n\
             echo \"| $1 figure | 1.5 ms |\" >&2\necho 'progress line' >&2\n"
        )
    };
    write_exe(&b.join("bench/gpu"), &figures);
    // `g2po train ... --device D --log F`: three iterations, 0.5 s apart on the CPU and 0.25 s
    // on CUDA after a 2 s first iteration.
    write_exe(
        &b.join("bin/g2po"),
        r#"if [ "$2" = --help ]; then echo 'Usage: g2po train [OPTIONS]'; exit 0; fi
dev=; log=
while [ $# -gt 0 ]; do case "$1" in --device) dev=$2; shift ;; --log) log=$2; shift ;; esac; shift; done
if [ "$dev" = cpu ]; then w=(0.5 1.0 1.5); else w=(2.0 2.25 2.5); fi
: > "$log"
for i in 1 2 3; do
  echo "{\"iteration\":$i,\"horizon\":30,\"train_success\":0.$i,\"eval_success\":0.$((i+1)),\"update\":{\"policy_loss\":0.1},\"wall_s\":${w[$((i-1))]}}" >> "$log"
done
"#,
    );
    write_exe(&root.join("fakebin/nvidia-smi"), "echo 'NVIDIA H200, 580.159.03, 143771 MiB, 9.0'\n");
    Scratch(root)
}

struct Run {
    ok: bool,
    stdout: String,
    figures: String,
    jsonl: String,
}

fn run_check(s: &Scratch, gpu: bool, require: bool, extra: &[&str]) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh");
    let out = s.0.join("out");
    let path = std::env::var("PATH").unwrap_or_default();
    let path = if gpu { format!("{}:{path}", s.0.join("fakebin").display()) } else { path };
    let mut cmd = Command::new("bash");
    cmd.arg(script).arg("--bundle").arg(s.0.join("bundle")).args(extra).arg(&out).env("PATH", path);
    // Keep the machine's own CUDA libraries and Python out of the run: the fake bundle needs none.
    cmd.env("G2PO_REQUIRE_GPU", if require { "1" } else { "0" }).env_remove("G2PO_CUDA_LIB_PATH");
    let o = cmd.output().expect("bash runs the script");
    let read = |f: &str| fs::read_to_string(out.join(f)).unwrap_or_default();
    Run {
        ok: o.status.success(),
        stdout: format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        figures: read("figures.md"),
        jsonl: read("figures.jsonl"),
    }
}

fn has_nvidia_smi() -> bool {
    Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success())
}

#[test]
fn a_clean_run_passes_every_part_and_assembles_the_figures() {
    let s = fake_bundle("clean", Fake::default());
    let r = run_check(&s, true, true, &[]);
    assert!(r.ok, "{}", r.stdout);
    for part in ["preflight", "device", "tests", "loss", "stages", "train"] {
        assert!(r.figures.contains(&format!("| {part} | PASS |")), "{part} did not pass:\n{}", r.figures);
    }
    assert!(r.figures.contains("| lora | N/A |"), "{}", r.figures);
    assert!(r.figures.contains("4 tests passed in 2 executables, none skipped"), "{}", r.figures);
    assert!(r.figures.starts_with("# GPU check: NVIDIA H200"), "{}", r.figures);
    for part in ["device", "loss", "stages"] {
        assert!(r.jsonl.contains(&format!("{{\"part\":\"{part}\",\"ms\":1.5}}")), "{}", r.jsonl);
        assert!(r.figures.contains(&format!("| {part} figure | 1.5 ms |")), "{}", r.figures);
    }
    assert!(!r.figures.contains("progress line"), "only table rows go into figures.md");
    // Per-iteration times from wall_s: the first, then the median of the rest.
    assert!(r.figures.contains("3 iterations; first 0.500 s, median of the rest 0.5000 s"), "{}", r.figures);
    assert!(r.figures.contains("3 iterations; first 2.000 s, median of the rest 0.2500 s"), "{}", r.figures);
    assert!(r.figures.contains("train success first 3 0.200, last 3 0.200; last eval success 0.4"), "{}", r.figures);
    assert!(r.figures.contains("| 2 | 0.500 | 0.250 | 0.2 | 0.2 |"), "{}", r.figures);
    assert!(s.0.join("out/train-cuda.jsonl").is_file() && s.0.join("out/parts.log").is_file());
    assert_eq!(r.stdout.matches("# GPU check").count(), 1, "figures.md is printed once at the end");
}

#[test]
fn without_a_gpu_every_part_skips_unless_the_gpu_is_required() {
    if has_nvidia_smi() {
        eprintln!("this machine has nvidia-smi: the no-GPU path cannot be shown here");
        return;
    }
    let s = fake_bundle("nogpu", Fake::default());
    let r = run_check(&s, false, false, &[]);
    assert!(r.ok, "{}", r.stdout);
    for part in ["device", "tests", "loss", "stages", "train", "lora"] {
        assert!(r.figures.contains(&format!("| {part} | SKIP | skipped: no GPU (")), "{part}:\n{}", r.figures);
    }
    let r = run_check(&s, false, true, &[]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.figures.contains("| preflight | FAIL | G2PO_REQUIRE_GPU=1 but no GPU: "), "{}", r.figures);
    assert!(!r.figures.contains("| tests |"), "it must fail before running anything:\n{}", r.figures);
}

#[test]
fn a_failing_test_is_named_and_fails_the_run() {
    let s = fake_bundle("failing", Fake { failing_test: true, ..Fake::default() });
    let r = run_check(&s, true, true, &[]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.figures.contains("| tests | FAIL | cuda_gpu: stages_gpu_match_engine |"), "{}", r.figures);
    assert!(r.figures.contains("| train | PASS |"), "the other parts still run:\n{}", r.figures);
}

#[test]
fn a_test_that_passes_by_skipping_is_a_skip() {
    let s = fake_bundle("testskip", Fake { test_skips: true, ..Fake::default() });
    let r = run_check(&s, true, false, &["--only", "tests"]);
    assert!(r.ok, "{}", r.stdout);
    assert!(
        r.figures.contains("| tests | SKIP | skipped: no GPU (tests that skipped in: cuda_gpu; 3 passed) |"),
        "{}",
        r.figures
    );
}

#[test]
fn a_hanging_part_is_cut_off_and_the_rest_still_runs() {
    let s = fake_bundle("hang", Fake { hanging_loss: true, ..Fake::default() });
    let t = std::time::Instant::now();
    let r = run_check(&s, true, true, &["--limit", "loss=2"]);
    assert!(t.elapsed().as_secs() < 30, "the hang was not cut off");
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.figures.contains("| loss | TIMEOUT | after 2 s |"), "{}", r.figures);
    assert!(r.figures.contains("| stages | PASS |") && r.figures.contains("| train | PASS |"), "{}", r.figures);
    let bad = run_check(&s, true, true, &["--limit", "loss=soon"]);
    assert!(!bad.ok && bad.stdout.contains("bad --limit"), "{}", bad.stdout);
}

#[test]
fn a_skip_of_the_figures_program_is_a_skip_or_with_the_switch_a_failure() {
    let s = fake_bundle("figskip", Fake { figures_skip: true, ..Fake::default() });
    let r = run_check(&s, true, false, &["--only", "loss,stages"]);
    assert!(r.ok, "{}", r.stdout);
    assert!(r.figures.contains("| loss | SKIP | skipped: no GPU: fake DriverError(\"x\") |"), "{}", r.figures);
    assert!(!r.figures.contains("| train |"), "--only runs the named parts only:\n{}", r.figures);
    let r = run_check(&s, true, true, &["--only", "loss"]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.figures.contains("| loss | FAIL | exit 1: G2PO_REQUIRE_GPU=1 but no usable CUDA GPU |"), "{}", r.figures);
}
