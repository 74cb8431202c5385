//! `vpnctl completions <shell>`: needs no cluster, so it also works on a laptop.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::output::Output;

/// The completion script for `shell`, printed as is whatever `-o` says.
pub fn run(shell: Shell) -> Output {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vpnctl", &mut script);
    Output::Raw(String::from_utf8_lossy(&script).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_mention_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let Output::Raw(script) = run(shell) else {
                panic!("completions are raw text");
            };
            assert!(script.contains("vpnctl"), "{shell}");
            let words = ["disable", "rotate-token", "reset-traffic", "cordon", "drain", "data-limit", "monthly"];
            let access = ["whoami", "unbind", "revoke", "permissions", "users.secrets", "audit", "since", "token"];
            for word in words.into_iter().chain(access) {
                assert!(script.contains(word), "{shell}: {word}");
            }
        }
    }
}
