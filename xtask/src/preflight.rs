//! Can this machine build RocksDB? The answer, computed without touching the machine.
//!
//! `librocksdb-sys` compiles RocksDB's C++ with the `cc` crate (so it needs a C++
//! compiler) and generates its Rust bindings with bindgen, which loads libclang through
//! clang-sys. Without libclang the build panics inside a build script ("Unable to find
//! libclang") after minutes of compiling other crates. This module looks for libclang
//! where clang-sys looks (`LIBCLANG_PATH` alone when it is set, else `llvm-config`'s
//! directory, the library path variables and the usual system directories) and for a
//! C++ compiler on `PATH`.
//!
//! Everything here sees the machine only through [`FsView`] and the values it is
//! handed, so the tests can describe any machine; `main` supplies the real one.

use std::fs;
use std::path::{Path, PathBuf};

/// The directories clang-sys searches on Linux and macOS, as patterns whose `*` stands
/// for any part of one path component.
pub const LIBCLANG_DIRS: &[&str] = &[
    "/usr/lib/llvm-*/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib64/llvm*/lib*",
    "/usr/lib",
    "/usr/local/llvm*/lib*",
    "/usr/local/lib",
    "/opt/homebrew/opt/llvm/lib",
    "/usr/local/opt/llvm/lib",
    "/Library/Developer/CommandLineTools/usr/lib",
    "/Applications/Xcode.app/Contents/Developer/Toolchains/XcodeDefault.xctoolchain/usr/lib",
];

/// The C++ compilers the `cc` crate can use without configuration.
pub const CXX_NAMES: &[&str] = &["c++", "g++", "clang++"];

/// The machine's file system, as far as the preflight looks at it.
pub trait FsView {
    /// The names of the entries of `dir`; empty if it is missing or unreadable.
    fn list(&self, dir: &Path) -> Vec<String>;
    /// Whether `path` is a file, after following symlinks.
    fn is_file(&self, path: &Path) -> bool;
    /// Whether `path` is a file that may be executed.
    fn is_executable(&self, path: &Path) -> bool;
}

/// The real file system.
pub struct RealFs;

impl FsView for RealFs {
    fn list(&self, dir: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn is_executable(&self, path: &Path) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        {
            path.is_file() || path.with_extension("exe").is_file()
        }
    }
}

/// A machine with nothing installed: what `SEATD_XTASK_ASSUME_MISSING=1` shows.
pub struct EmptyFs;

impl FsView for EmptyFs {
    fn list(&self, _: &Path) -> Vec<String> {
        Vec::new()
    }
    fn is_file(&self, _: &Path) -> bool {
        false
    }
    fn is_executable(&self, _: &Path) -> bool {
        false
    }
}

/// What decides where libclang is looked for, besides the fixed [`LIBCLANG_DIRS`].
#[derive(Default)]
pub struct LibclangEnv {
    /// `LIBCLANG_PATH` as set (a directory or the library itself); bindgen looks nowhere
    /// else when it is set, even when it is empty or wrong.
    pub libclang_path: Option<String>,
    /// What `llvm-config --libdir` printed, if it ran.
    pub llvm_libdir: Option<PathBuf>,
    /// The directories of `LD_LIBRARY_PATH` and `LIBRARY_PATH`, in that order.
    pub library_paths: Vec<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Libclang {
    Found(PathBuf),
    /// `LIBCLANG_PATH` is set but names no libclang.
    BadLibclangPath(String),
    Missing,
}

/// Whether a file name is one clang-sys would load as libclang (`libclang.so`,
/// `libclang.so.1`, `libclang-14.so`, `libclang-14.so.1`, `libclang.dylib`), and not
/// `libclang-cpp`, which is another library.
pub fn is_libclang(name: &str) -> bool {
    if name.contains("-cpp.") {
        return false;
    }
    name == "libclang.so"
        || name.starts_with("libclang.so.")
        || name == "libclang.dylib"
        || (name.starts_with("libclang-") && (name.ends_with(".so") || name.contains(".so.")))
}

/// The first libclang in `dir`, by name, if any.
fn libclang_in(dir: &Path, fs: &dyn FsView) -> Option<PathBuf> {
    let mut names: Vec<String> = fs
        .list(dir)
        .into_iter()
        .filter(|n| is_libclang(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| fs.is_file(p))
}

/// The directories a pattern of [`LIBCLANG_DIRS`] names, newest version first
/// (`/usr/lib/llvm-18/lib` before `/usr/lib/llvm-14/lib`).
pub fn expand(pattern: &str, fs: &dyn FsView) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for component in Path::new(pattern).components() {
        let part = component.as_os_str().to_string_lossy();
        let Some((head, tail)) = part.split_once('*') else {
            found.iter_mut().for_each(|p| p.push(&*part));
            continue;
        };
        let mut next = Vec::new();
        for dir in &found {
            let mut names: Vec<String> = fs
                .list(dir)
                .into_iter()
                .filter(|n| n.len() >= head.len() + tail.len())
                .filter(|n| n.starts_with(head) && n.ends_with(tail))
                .collect();
            names.sort_by(|a, b| b.cmp(a));
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    found
}

/// Finds libclang as clang-sys would, or says why bindgen would not.
pub fn find_libclang(env: &LibclangEnv, fs: &dyn FsView) -> Libclang {
    if let Some(set) = &env.libclang_path {
        let path = Path::new(set);
        let names_file = path
            .file_name()
            .is_some_and(|n| is_libclang(&n.to_string_lossy()));
        let hit = if set.is_empty() {
            None
        } else if names_file && fs.is_file(path) {
            Some(path.to_path_buf())
        } else {
            libclang_in(path, fs)
        };
        return hit.map_or_else(|| Libclang::BadLibclangPath(set.clone()), Libclang::Found);
    }
    let fixed = LIBCLANG_DIRS.iter().flat_map(|p| expand(p, fs));
    env.llvm_libdir
        .iter()
        .cloned()
        .chain(env.library_paths.iter().cloned())
        .chain(fixed)
        .find_map(|dir| libclang_in(&dir, fs))
        .map_or(Libclang::Missing, Libclang::Found)
}

/// The first program called `name` in the `PATH` directories.
pub fn find_program(name: &str, path: &[PathBuf], fs: &dyn FsView) -> Option<PathBuf> {
    path.iter()
        .map(|d| d.join(name))
        .find(|p| fs.is_executable(p))
}

/// The first of [`CXX_NAMES`] on `PATH`.
pub fn find_cxx(path: &[PathBuf], fs: &dyn FsView) -> Option<PathBuf> {
    CXX_NAMES.iter().find_map(|n| find_program(n, path, fs))
}

/// The target directory cargo builds into: `CARGO_TARGET_DIR` (relative to the current
/// directory, as cargo reads it) if set, else the workspace's `target`.
pub fn target_dir(cargo_target_dir: Option<&str>, cwd: &Path, workspace: &Path) -> PathBuf {
    match cargo_target_dir {
        Some(dir) if !dir.is_empty() => cwd.join(dir),
        _ => workspace.join("target"),
    }
}

/// Whether the `dev` profile in `target` holds a finished RocksDB build: cargo writes a
/// build script's `output` file only when the script succeeded.
pub fn rocksdb_built(target: &Path, fs: &dyn FsView) -> bool {
    let build = target.join("debug").join("build");
    fs.list(&build)
        .iter()
        .filter(|n| n.starts_with("librocksdb-sys-"))
        .any(|n| fs.is_file(&build.join(n).join("output")))
}

/// What the preflight found.
pub struct Findings {
    pub libclang: Libclang,
    pub cxx: Option<PathBuf>,
}

impl Findings {
    pub fn ok(&self) -> bool {
        matches!(self.libclang, Libclang::Found(_)) && self.cxx.is_some()
    }

    /// Whether installing clang and libclang-dev could fix what is missing: not when
    /// `LIBCLANG_PATH` points elsewhere, since bindgen would still look only there.
    pub fn installable(&self) -> bool {
        !self.ok() && !matches!(self.libclang, Libclang::BadLibclangPath(_))
    }

    /// One line per missing piece.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.libclang {
            Libclang::Found(_) => {}
            Libclang::BadLibclangPath(set) => out.push(format!(
                "LIBCLANG_PATH is set to {set:?}, which holds no libclang \
                 (bindgen looks nowhere else when it is set)"
            )),
            Libclang::Missing => out.push(
                "libclang not found (bindgen loads it to generate RocksDB's Rust bindings)".into(),
            ),
        }
        if self.cxx.is_none() {
            let names = CXX_NAMES.join(", ");
            out.push(format!("no C++ compiler on PATH ({names}); RocksDB is C++"));
        }
        out
    }

    /// What to do about it, for a person.
    pub fn instructions(&self) -> String {
        let install = "  Debian/Ubuntu: sudo apt-get install clang libclang-dev\n  \
                       Fedora:        sudo dnf install clang clang-devel\n  \
                       macOS:         xcode-select --install\n";
        match &self.libclang {
            Libclang::BadLibclangPath(set) => format!(
                "Unset LIBCLANG_PATH (now {set:?}) or point it at the directory that holds \
                 libclang.so, then run this again. If libclang is not installed:\n{install}"
            ),
            _ => format!(
                "Install clang, libclang and a C++ compiler, then run this again:\n{install}\
                 If libclang is installed somewhere else, set LIBCLANG_PATH to the \
                 directory that holds it.\n"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
