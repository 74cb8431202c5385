//! The secrets `vpnctl login` reads: an LDAP password, typed by a person at a prompt without
//! echo or given by a script as the first line of stdin; and an ID token from a file or stdin.
//! Neither is ever repeated in a message.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use rustix::termios::{self, LocalModes, OptionalActions, Termios};

use crate::error::CliError;

/// Longest password read; LDAP servers take far less, and a longer "line" is a wrong file.
const MAX_PASSWORD: usize = 1024;
/// Longest ID token read; the cluster takes 16 KiB, the rest is for whitespace around it.
const MAX_ID_TOKEN: usize = 64 * 1024;

/// `user`'s password: from the terminal with a prompt on stderr and echo off, else the first
/// line of stdin (without its line ending).
pub fn password(user: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "Password for {user}: ").and_then(|()| stderr.flush());
        let _echo_off = EchoOff::new(stdin.as_fd())
            .map_err(|e| CliError::InvalidInput(format!("cannot turn off the terminal's echo: {e}")))?;
        first_line(stdin.lock(), MAX_PASSWORD)
    } else {
        first_line(stdin.lock(), MAX_PASSWORD)
    };
    match password {
        Ok(Some(password)) if !password.is_empty() => Ok(password),
        // An empty password is an anonymous bind to many LDAP servers: never send one.
        Ok(_) => Err(CliError::InvalidInput(
            "no password: type it at the prompt, or give it as the first line of stdin".into(),
        )),
        Err(why) => Err(CliError::InvalidInput(format!("cannot read the password: {why}"))),
    }
}

/// The ID token in `path` (`-`: stdin), without the whitespace around it.
pub fn id_token(path: &Path) -> Result<String, CliError> {
    let shown = path.display();
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().lock().take(MAX_ID_TOKEN as u64 + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_ID_TOKEN as u64 + 1).read_to_end(&mut bytes))
    };
    read.map_err(|e| CliError::InvalidInput(format!("cannot read --id-token {shown}: {e}")))?;
    if bytes.len() > MAX_ID_TOKEN {
        return Err(CliError::InvalidInput(format!(
            "--id-token {shown} is over {MAX_ID_TOKEN} bytes: an ID token is a few KiB"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| CliError::InvalidInput(format!("--id-token {shown} is not text: give the ID token (a JWT)")))?;
    match text.trim() {
        "" => Err(CliError::InvalidInput(format!("--id-token {shown} is empty"))),
        token => Ok(token.to_owned()),
    }
}

/// The first line of `input` without `\n` or `\r\n`; `None` at the end of input.
fn first_line(input: impl BufRead, max: usize) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    input.take(max as u64 + 2).read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() > max {
        return Err(format!("the line is over {max} bytes"));
    }
    String::from_utf8(line).map(Some).map_err(|_| "it is not UTF-8".into())
}

/// The terminal's echo turned off (the newline still echoed) until dropped.
struct EchoOff<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> EchoOff<'a> {
    fn new(fd: std::os::fd::BorrowedFd<'a>) -> std::io::Result<Self> {
        let saved = termios::tcgetattr(fd)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        termios::tcsetattr(fd, OptionalActions::Flush, &quiet)?;
        Ok(Self { fd, saved })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(input: &[u8]) -> Result<Option<String>, String> {
        first_line(input, 8)
    }

    #[test]
    fn the_first_line_is_read_without_its_ending_and_within_bounds() {
        assert_eq!(line(b"pw\nnext\n"), Ok(Some("pw".into())));
        assert_eq!(line(b" p w \r\n"), Ok(Some(" p w ".into())), "spaces are part of a password");
        assert_eq!(line(b"no-nl"), Ok(Some("no-nl".into())));
        assert_eq!(line(b"12345678\r\n"), Ok(Some("12345678".into())));
        assert_eq!(line(b""), Ok(None));
        assert_eq!(line(b"\n"), Ok(Some(String::new())));
        assert_eq!(line(b"12345678\n"), Ok(Some("12345678".into())), "exactly the bound");
        assert_eq!(line(b"123456789\n"), Err("the line is over 8 bytes".into()));
        assert_eq!(line(b"\xff\n"), Err("it is not UTF-8".into()));
    }

    #[test]
    fn an_id_token_file_is_trimmed_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token.jwt");
        std::fs::write(&path, "  a.b.c\n").expect("write");
        assert_eq!(id_token(&path).map_err(|e| e.to_string()), Ok("a.b.c".into()));
        std::fs::write(&path, "\n").expect("write");
        assert!(id_token(&path).is_err_and(|e| e.exit_code() == 2 && e.to_string().ends_with("is empty")));
        std::fs::write(&path, vec![b'a'; MAX_ID_TOKEN + 1]).expect("write");
        assert!(id_token(&path).is_err_and(|e| e.to_string().contains("is over")));
        let missing = dir.path().join("missing");
        assert!(id_token(&missing).is_err_and(|e| e.to_string().starts_with("cannot read --id-token ")));
    }
}
