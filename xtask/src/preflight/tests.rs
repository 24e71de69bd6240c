//! The preflight on made-up machines.

use super::*;
use std::collections::BTreeSet;

/// A file system made of the listed files (directories are implied).
struct FakeFs(BTreeSet<PathBuf>);

fn fake(files: &[&str]) -> FakeFs {
    FakeFs(files.iter().map(PathBuf::from).collect())
}

impl FsView for FakeFs {
    fn list(&self, dir: &Path) -> Vec<String> {
        let names = self.0.iter().filter_map(|f| {
            let rest = f.strip_prefix(dir).ok()?;
            Some(
                rest.components()
                    .next()?
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        names.collect::<BTreeSet<_>>().into_iter().collect()
    }
    fn is_file(&self, path: &Path) -> bool {
        self.0.contains(path)
    }
    fn is_executable(&self, path: &Path) -> bool {
        self.0.contains(path)
    }
}

fn found(path: &str) -> Libclang {
    Libclang::Found(PathBuf::from(path))
}

#[test]
fn libclang_names_are_those_clang_sys_loads() {
    for name in [
        "libclang.so",
        "libclang.so.1",
        "libclang-14.so",
        "libclang-14.so.13",
    ] {
        assert!(is_libclang(name), "{name}");
    }
    for name in [
        "libclang-cpp.so.14",
        "libclang-cpp.so",
        "libclangAST.a",
        "libclang.a",
    ] {
        assert!(!is_libclang(name), "{name}");
    }
}

#[test]
fn debian_libclang_dev_is_found_newest_llvm_first() {
    let fs = fake(&[
        "/usr/lib/llvm-14/lib/libclang.so",
        "/usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "/usr/lib/llvm-18/lib/libclang.so.1",
        "/usr/lib/x86_64-linux-gnu/libclang-14.so.1",
    ]);
    let env = LibclangEnv::default();
    assert_eq!(
        find_libclang(&env, &fs),
        found("/usr/lib/llvm-18/lib/libclang.so.1")
    );
}

#[test]
fn runtime_package_alone_is_found_in_the_multiarch_dir() {
    let fs = fake(&["/usr/lib/aarch64-linux-gnu/libclang-16.so.16"]);
    let env = LibclangEnv::default();
    assert_eq!(
        find_libclang(&env, &fs),
        found("/usr/lib/aarch64-linux-gnu/libclang-16.so.16")
    );
}

#[test]
fn llvm_config_and_library_paths_come_before_system_dirs() {
    let fs = fake(&[
        "/opt/llvm/lib/libclang.so",
        "/home/me/lib/libclang.so",
        "/usr/lib64/libclang.so",
    ]);
    let mut env = LibclangEnv {
        library_paths: vec!["/home/me/lib".into()],
        ..LibclangEnv::default()
    };
    assert_eq!(find_libclang(&env, &fs), found("/home/me/lib/libclang.so"));
    env.llvm_libdir = Some("/opt/llvm/lib".into());
    assert_eq!(find_libclang(&env, &fs), found("/opt/llvm/lib/libclang.so"));
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let fs = fake(&["/usr/lib/llvm-14/lib/libclang-cpp.so.14", "/usr/bin/c++"]);
    assert_eq!(
        find_libclang(&LibclangEnv::default(), &fs),
        Libclang::Missing
    );
}

#[test]
fn libclang_path_is_the_only_place_looked_when_set() {
    let fs = fake(&[
        "/usr/lib/llvm-14/lib/libclang.so",
        "/opt/clang/lib/libclang.so",
    ]);
    let at = |set: &str| {
        let env = LibclangEnv {
            libclang_path: Some(set.into()),
            ..LibclangEnv::default()
        };
        find_libclang(&env, &fs)
    };
    assert_eq!(at("/opt/clang/lib"), found("/opt/clang/lib/libclang.so"));
    assert_eq!(
        at("/opt/clang/lib/libclang.so"),
        found("/opt/clang/lib/libclang.so")
    );
    assert_eq!(
        at("/nonexistent"),
        Libclang::BadLibclangPath("/nonexistent".into())
    );
    assert_eq!(at(""), Libclang::BadLibclangPath(String::new()));
}

#[test]
fn expand_matches_within_one_component() {
    let fs = fake(&[
        "/usr/lib/llvm-14/lib/x",
        "/usr/lib/llvm-18/lib/x",
        "/usr/lib/llvm-18/include/x",
        "/usr/lib/llvm/lib/x",
    ]);
    let dirs = expand("/usr/lib/llvm-*/lib", &fs);
    assert_eq!(
        dirs,
        vec![
            PathBuf::from("/usr/lib/llvm-18/lib"),
            "/usr/lib/llvm-14/lib".into()
        ]
    );
    assert_eq!(
        expand("/usr/local/lib", &fs),
        vec![PathBuf::from("/usr/local/lib")]
    );
}

#[test]
fn cxx_is_any_of_the_usual_names_on_path() {
    let path: Vec<PathBuf> = vec!["/usr/local/bin".into(), "/usr/bin".into()];
    assert_eq!(
        find_cxx(&path, &fake(&["/usr/bin/clang++"])),
        Some("/usr/bin/clang++".into())
    );
    assert_eq!(
        find_cxx(&path, &fake(&["/usr/bin/g++", "/usr/local/bin/c++"])),
        Some("/usr/local/bin/c++".into())
    );
    assert_eq!(
        find_cxx(&path, &fake(&["/usr/bin/cc", "/opt/bin/c++"])),
        None
    );
}

#[test]
fn a_rocksdb_build_counts_once_its_build_script_finished() {
    let target = Path::new("/t");
    assert!(!rocksdb_built(
        target,
        &fake(&["/t/debug/build/libc-1/output"])
    ));
    assert!(!rocksdb_built(
        target,
        &fake(&["/t/debug/build/librocksdb-sys-ab/build-script-build"])
    ));
    assert!(rocksdb_built(
        target,
        &fake(&["/t/debug/build/librocksdb-sys-cd/output"])
    ));
    assert!(!rocksdb_built(
        target,
        &fake(&["/t/release/build/librocksdb-sys-cd/output"])
    ));
}

#[test]
fn target_dir_follows_cargo() {
    let (cwd, ws) = (Path::new("/work/main/client"), Path::new("/work/main"));
    assert_eq!(
        target_dir(None, cwd, ws),
        PathBuf::from("/work/main/target")
    );
    assert_eq!(
        target_dir(Some(""), cwd, ws),
        PathBuf::from("/work/main/target")
    );
    assert_eq!(target_dir(Some("/c/t"), cwd, ws), PathBuf::from("/c/t"));
    assert_eq!(
        target_dir(Some("t"), cwd, ws),
        PathBuf::from("/work/main/client/t")
    );
}

#[test]
fn findings_say_what_is_missing_and_whether_installing_helps() {
    let nothing = Findings {
        libclang: Libclang::Missing,
        cxx: None,
    };
    assert!(!nothing.ok() && nothing.installable());
    assert_eq!(nothing.problems().len(), 2);
    let text = nothing.instructions();
    for needle in [
        "apt-get install clang libclang-dev",
        "dnf install clang clang-devel",
        "xcode-select --install",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }

    let bad_path = Findings {
        libclang: Libclang::BadLibclangPath("/nonexistent".into()),
        cxx: Some("/usr/bin/c++".into()),
    };
    assert!(!bad_path.ok() && !bad_path.installable());
    assert!(bad_path.problems()[0].contains("/nonexistent"));
    assert!(bad_path.instructions().starts_with("Unset LIBCLANG_PATH"));

    let all = Findings {
        libclang: found("/usr/lib/libclang.so"),
        cxx: Some("/usr/bin/c++".into()),
    };
    assert!(all.ok() && !all.installable() && all.problems().is_empty());
}

#[test]
fn an_empty_machine_has_nothing() {
    let env = LibclangEnv::default();
    assert_eq!(find_libclang(&env, &EmptyFs), Libclang::Missing);
    assert_eq!(find_cxx(&["/usr/bin".into()], &EmptyFs), None);
    assert!(!rocksdb_built(Path::new("/t"), &EmptyFs));
}
