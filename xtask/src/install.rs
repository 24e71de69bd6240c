//! Installing what the preflight found missing: `clang` and `libclang-dev` with apt-get,
//! on Debian and Ubuntu only, and only when that needs no password (we are root, or
//! `sudo -n` works). Anywhere else the preflight prints what to install instead.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::preflight::{find_program, RealFs};
use crate::say;

/// What apt-get installs: clang (which also provides `c++` on Debian) and libclang.
pub const APT_PACKAGES: &[&str] = &["clang", "libclang-dev"];

/// How the install commands get root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    Root,
    Sudo,
}

/// How this machine could install without asking anyone, if it can.
pub fn privilege(path: &[PathBuf]) -> Option<Privilege> {
    find_program("apt-get", path, &RealFs)?;
    let uid = Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return Some(Privilege::Root);
    }
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    sudo.is_ok_and(|s| s.success()).then_some(Privilege::Sudo)
}

/// The commands that install [`APT_PACKAGES`]: `apt-get update`, then the install.
/// `env` sets DEBIAN_FRONTEND, since sudo would drop it from our environment.
pub fn apt_commands(privilege: Privilege) -> Vec<Vec<String>> {
    let prefix: &[&str] = match privilege {
        Privilege::Root => &["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"],
        Privilege::Sudo => &[
            "sudo",
            "-n",
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
        ],
    };
    let update = ["update"].as_slice();
    let install = [
        ["install", "-y", "--no-install-recommends"].as_slice(),
        APT_PACKAGES,
    ]
    .concat();
    [update, install.as_slice()]
        .iter()
        .map(|args| {
            prefix
                .iter()
                .chain(args.iter())
                .map(|s| s.to_string())
                .collect()
        })
        .collect()
}

/// Runs [`apt_commands`], saying what each does; a failed `apt-get update` does not stop
/// the install (the package lists on disk may do). The caller checks the result.
pub fn run(privilege: Privilege) {
    say(&format!(
        "installing {} with apt-get (RocksDB's bindings need libclang)",
        APT_PACKAGES.join(" ")
    ));
    for argv in apt_commands(privilege) {
        say(&format!("running: {}", argv.join(" ")));
        match Command::new(&argv[0]).args(&argv[1..]).status() {
            Ok(status) if status.success() => {}
            Ok(status) => say(&format!("{} failed ({status})", argv.join(" "))),
            Err(err) => say(&format!("could not run {}: {err}", argv[0])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_runs_apt_get_directly_and_others_through_sudo() {
        let root = apt_commands(Privilege::Root);
        assert_eq!(
            root[0].join(" "),
            "env DEBIAN_FRONTEND=noninteractive apt-get update"
        );
        assert_eq!(
            root[1].join(" "),
            "env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
             clang libclang-dev"
        );
        let sudo = apt_commands(Privilege::Sudo);
        assert_eq!(sudo.len(), 2);
        assert!(sudo.iter().all(|argv| argv[..2] == ["sudo", "-n"]));
        assert_eq!(sudo[1][2..], root[1][..]);
    }
}
