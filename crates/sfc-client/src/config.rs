//! `transfer.info` and command-line flags → one validated [`Config`].
//!
//! `transfer.info` (docs/PROTOCOL.md, "State files — Client"): line 1 `address:port`,
//! line 2 the user name (at most 100 characters), line 3 the path of the file to send.
//! Flags override lines: `--server` line 1, `--name` line 2, file arguments line 3. A line
//! is only read and checked when no flag replaces it, and every error names its origin
//! (`transfer.info line 2`, `--server`, a file argument) and says what is wrong.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use sfc_proto::Name;
use thiserror::Error;

pub use crate::address::ServerAddress;
use crate::cli::{Cli, Options};
use crate::files;
pub use crate::files::{check_file, FileToSend};

/// File name of the batch description in the client's folder.
pub const TRANSFER_INFO: &str = "transfer.info";
/// Longest user name transfer.info may hold (docs/PROTOCOL.md, "State files").
pub const MAX_USER_NAME_CHARS: usize = 100;

/// Where a configuration value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A line of transfer.info (1-based).
    Line {
        /// The transfer.info path.
        file: PathBuf,
        /// Line number, from 1.
        line: usize,
    },
    /// transfer.info as a whole.
    TransferInfo(PathBuf),
    /// A command-line flag such as `--server`.
    Flag(&'static str),
    /// A file given on the command line.
    Argument(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line { file, line } => write!(f, "{} line {line}", file.display()),
            Origin::TransferInfo(file) => write!(f, "{}", file.display()),
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::Argument(path) => write!(f, "file argument {}", path.display()),
        }
    }
}

/// A configuration error: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{origin}: {reason}")]
pub struct ConfigError {
    /// Where the bad value came from.
    pub origin: Origin,
    /// What is wrong with it, and how to fix it.
    pub reason: String,
}

/// Validates a user name: 1..=100 printable ASCII characters.
pub fn parse_user_name(text: &str) -> Result<Name, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the user name is empty".to_owned());
    }
    let chars = text.chars().count();
    if chars > MAX_USER_NAME_CHARS {
        return Err(format!(
            "the user name is {chars} characters long; at most {MAX_USER_NAME_CHARS} are allowed"
        ));
    }
    if let Some((i, c)) = text
        .chars()
        .enumerate()
        .find(|(_, c)| !(' '..='~').contains(c))
    {
        return Err(format!(
            "the user name contains {c:?} at character {}; only printable ASCII characters \
             (letters, digits, punctuation, space) are allowed",
            i + 1
        ));
    }
    Name::new(text).map_err(|e| format!("invalid user name: {e}"))
}

/// The validated configuration of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The server.
    pub server: ServerAddress,
    /// The user name from line 2 or `--name`; `None` only when neither is given (then
    /// me.info must exist and supplies it).
    pub name: Option<Name>,
    /// Where me.info and priv.key live.
    pub dir: PathBuf,
    /// The files to send, in order.
    pub files: Vec<FileToSend>,
    /// How to talk to the server, as given on the command line.
    pub options: Options,
    /// Non-fatal remarks about the input (ignored extra lines).
    pub warnings: Vec<String>,
}

/// The lines of transfer.info, with nothing validated yet: each is checked when it is
/// used, so a line a flag replaces may hold anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferInfo {
    /// The lines, without line endings; `None` for one that is not UTF-8 text.
    pub lines: Vec<Option<String>>,
}

impl TransferInfo {
    /// Splits the file's bytes into lines (LF or CRLF, a leading BOM ignored).
    pub fn parse(bytes: &[u8]) -> Self {
        let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let lines = if bytes.is_empty() {
            Vec::new()
        } else {
            bytes
                .split(|&b| b == b'\n')
                .map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    std::str::from_utf8(line).ok().map(str::to_owned)
                })
                .collect()
        };
        TransferInfo { lines }
    }

    /// Line `n` (1-based), if present: `Some(None)` when it is not UTF-8 text.
    pub fn line(&self, n: usize) -> Option<Option<&str>> {
        n.checked_sub(1)
            .and_then(|i| self.lines.get(i))
            .map(Option::as_deref)
    }
}

const LINE_NAMES: [&str; 3] = [
    "the server address (address:port)",
    "the user name",
    "the path of the file to send",
];

impl Config {
    /// Reads `<dir>/transfer.info` (when a line is needed) and applies the command line:
    /// each flag or file argument given replaces a line.
    pub fn load(overrides: &Cli) -> Result<Config, ConfigError> {
        let path = overrides.dir.join(TRANSFER_INFO);
        if overrides.server.is_some() && overrides.name.is_some() && !overrides.files.is_empty() {
            // Every line is replaced: the file is not read at all.
            return Self::from_parts(overrides, None, &path);
        }
        let needs_file = overrides.server.is_none() || overrides.files.is_empty();
        let info = match std::fs::read(&path) {
            Ok(bytes) => Some(TransferInfo::parse(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !needs_file => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let missing = if overrides.server.is_none() {
                    "--server"
                } else {
                    "a file to send"
                };
                return Err(ConfigError {
                    origin: Origin::TransferInfo(path),
                    reason: format!(
                        "not found, and the command line does not say everything it would \
                         ({missing} is missing). Write transfer.info (line 1 address:port, line 2 \
                         user name, line 3 file path) or pass --server, --name and the files"
                    ),
                });
            }
            Err(e) => {
                return Err(ConfigError {
                    origin: Origin::TransferInfo(path),
                    reason: format!("cannot be read: {e}"),
                })
            }
        };
        Self::from_parts(overrides, info.as_ref(), &path)
    }

    /// Validates transfer.info's lines (read from `path`) under the command line.
    pub fn from_parts(
        overrides: &Cli,
        info: Option<&TransferInfo>,
        path: &Path,
    ) -> Result<Config, ConfigError> {
        let lines = Lines { info, path };
        let server = match &overrides.server {
            Some(text) => ServerAddress::parse(text).map_err(|reason| ConfigError {
                origin: Origin::Flag("--server"),
                reason,
            })?,
            None => ServerAddress::parse(lines.needed(1, "--server")?).map_err(|reason| {
                ConfigError {
                    origin: lines.origin(1),
                    reason,
                }
            })?,
        };
        let name = match (&overrides.name, info) {
            (Some(text), _) => Some(parse_user_name(text).map_err(|reason| ConfigError {
                origin: Origin::Flag("--name"),
                reason,
            })?),
            // No line 2 (transfer.info holds only the address): me.info names the user,
            // or the registration asks for --name.
            (None, Some(info)) if info.line(2).is_none() => None,
            (None, Some(_)) => Some(parse_user_name(lines.needed(2, "--name")?).map_err(
                |reason| ConfigError {
                    origin: lines.origin(2),
                    reason,
                },
            )?),
            (None, None) => None,
        };
        let mut warnings = Vec::new();
        let files = if overrides.files.is_empty() {
            line_3_files(overrides, &lines, &mut warnings)?
        } else {
            file_arguments(overrides, &mut warnings)?
        };
        let files = name_files(files, overrides)?;
        if let Some(info) = info {
            for (i, line) in info.lines.iter().enumerate().skip(3) {
                if line.as_deref().is_none_or(|line| !line.trim().is_empty()) {
                    warnings.push(format!(
                        "{}: ignored (transfer.info has three lines: address, name, file)",
                        lines.origin(i + 1)
                    ));
                }
            }
        }
        Ok(Config {
            server,
            name,
            dir: overrides.dir.clone(),
            files,
            options: overrides.options.clone(),
            warnings,
        })
    }
}

/// transfer.info's lines (if it was read), for the values no flag replaces.
struct Lines<'a> {
    info: Option<&'a TransferInfo>,
    path: &'a Path,
}

impl Lines<'_> {
    fn origin(&self, line: usize) -> Origin {
        Origin::Line {
            file: self.path.to_owned(),
            line,
        }
    }

    /// Line `n`, which must be present and not blank (`flag` would replace it).
    fn needed(&self, n: usize, flag: &str) -> Result<&str, ConfigError> {
        let describe = LINE_NAMES.get(n - 1).copied().unwrap_or("a value");
        match self.info.and_then(|i| i.line(n)) {
            Some(Some(text)) if !text.trim().is_empty() => Ok(text),
            Some(None) => Err(ConfigError {
                origin: self.origin(n),
                reason: format!(
                    "is not valid UTF-8 text; it must hold {describe} (or pass {flag})"
                ),
            }),
            Some(Some(_)) => Err(ConfigError {
                origin: self.origin(n),
                reason: format!("is empty; it must hold {describe} (or pass {flag})"),
            }),
            None => Err(ConfigError {
                origin: self.origin(n),
                reason: format!("is missing; it must hold {describe} (or pass {flag})"),
            }),
        }
    }
}

/// The file on line 3 of transfer.info (relative to `--dir`); with `-r`, the regular
/// files below it if it is a folder.
fn line_3_files(
    cli: &Cli,
    lines: &Lines<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<FileToSend>, ConfigError> {
    let text = lines.needed(3, "the file as an argument")?.trim();
    let file_path = cli.dir.join(text);
    let line_3 = |reason: String| ConfigError {
        origin: lines.origin(3),
        reason: format!("{}: {reason}", file_path.display()),
    };
    if cli.recursive && file_path.is_dir() {
        return files_below(cli, &file_path, warnings, line_3);
    }
    let file = check_file(&file_path, cli.options.packet_sizing()).map_err(line_3)?;
    Ok(vec![file])
}

/// The files named on the command line; with `-r`, the regular files below each folder.
fn file_arguments(cli: &Cli, warnings: &mut Vec<String>) -> Result<Vec<FileToSend>, ConfigError> {
    let packet_size = cli.options.packet_sizing();
    let mut files = Vec::new();
    for path in &cli.files {
        let argument = |reason: String| ConfigError {
            origin: Origin::Argument(path.clone()),
            reason,
        };
        if cli.recursive && path.is_dir() {
            files.extend(files_below(cli, path, warnings, argument)?);
        } else {
            files.push(check_file(path, packet_size).map_err(argument)?);
        }
    }
    Ok(files)
}

/// With `-r`: the regular files below the folder `path`, each labelled with its path
/// below it; `refused` makes the error for the folder as a whole.
fn files_below(
    cli: &Cli,
    path: &Path,
    warnings: &mut Vec<String>,
    refused: impl Fn(String) -> ConfigError,
) -> Result<Vec<FileToSend>, ConfigError> {
    let found = files::walk(path, cli.follow_symlinks, &cli.dir)
        .map_err(|e| refused(format!("cannot be read: {e}")))?;
    for link in &found.skipped_links {
        warnings.push(format!(
            "{}: a symbolic link, not sent (--follow-symlinks sends what it points to)",
            link.display()
        ));
    }
    for link in &found.broken_links {
        warnings.push(format!(
            "{}: a symbolic link to nothing (its target does not exist), not sent",
            link.display()
        ));
    }
    warnings.extend(state_left_out(&found.skipped_state));
    if found.files.is_empty() && !found.skipped_state.is_empty() {
        return Err(refused(
            "holds nothing to send but the client's own state (identity, private key, \
             lock), which -r never sends"
                .to_owned(),
        ));
    }
    if found.files.is_empty() {
        return Err(refused("holds no regular file to send".to_owned()));
    }
    let packet_size = cli.options.packet_sizing();
    let mut files = Vec::new();
    for (file, relative) in found.files {
        let below = |reason| ConfigError {
            origin: Origin::Argument(file.clone()),
            reason,
        };
        let mut checked = check_file(&file, packet_size).map_err(below)?;
        checked.label = files::parse_label(&relative).map_err(below)?;
        files.push(checked);
    }
    Ok(files)
}

/// One warning per folder for the client's own files a walk left out.
fn state_left_out(skipped: &[PathBuf]) -> Vec<String> {
    let mut by_folder: Vec<(&Path, Vec<String>)> = Vec::new();
    for path in skipped {
        let folder = path.parent().unwrap_or(Path::new(""));
        let mut name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if path.is_dir() {
            name.push('/');
        }
        match by_folder.iter_mut().find(|(f, _)| *f == folder) {
            Some((_, names)) => names.push(name),
            None => by_folder.push((folder, vec![name])),
        }
    }
    by_folder
        .into_iter()
        .map(|(folder, names)| {
            let folder = if folder.as_os_str().is_empty() {
                Path::new(".")
            } else {
                folder
            };
            format!(
                "{}: {} of the client's own files not sent ({}): -r never sends the client's \
                 identity, private key or lock (name a file as an argument to send it)",
                folder.display(),
                names.len(),
                names.join(", ")
            )
        })
        .collect()
}

/// Applies `--as` and refuses a batch in which two files would be stored under the same
/// name (the second would silently replace the first on the server).
fn name_files(mut files: Vec<FileToSend>, cli: &Cli) -> Result<Vec<FileToSend>, ConfigError> {
    if let Some(name) = &cli.stored_as {
        let flag = |reason: String| ConfigError {
            origin: Origin::Flag("--as"),
            reason,
        };
        match files.as_mut_slice() {
            [file] => file.label = files::parse_label(name).map_err(flag)?,
            _ => {
                return Err(flag(format!(
                    "names one file, but {} files are to be sent",
                    files.len()
                )))
            }
        }
    }
    if let Some((first, second)) = files::same_label(&files) {
        return Err(ConfigError {
            origin: Origin::Argument(second.path.clone()),
            reason: format!(
                "would be stored on the server as {:?}, like {}: the server keeps one file per \
                 name, so one would replace the other. Send them in separate runs, or choose \
                 the stored name of one with --as NAME",
                second.label.as_str(),
                first.path.display()
            ),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Host;
    use clap::Parser;

    fn with_file(content: &str) -> (tempfile::TempDir, Cli) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.bin"), b"hello").unwrap();
        std::fs::write(dir.path().join(TRANSFER_INFO), content).unwrap();
        let overrides = Cli::in_dir(dir.path());
        (dir, overrides)
    }

    fn error_of(content: &str) -> ConfigError {
        let (_dir, overrides) = with_file(content);
        Config::load(&overrides).unwrap_err()
    }

    fn line_of(e: &ConfigError) -> usize {
        match e.origin {
            Origin::Line { line, .. } => line,
            ref other => panic!("expected a line origin, got {other:?}"),
        }
    }

    #[test]
    fn a_good_transfer_info_is_accepted() {
        let (dir, overrides) = with_file("127.0.0.1:1256\nalice\ndata.bin\n");
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.server.to_string(), "127.0.0.1:1256");
        assert_eq!(config.name.unwrap().as_str(), "alice");
        assert_eq!(config.files.len(), 1);
        assert_eq!(config.files[0].label.as_str(), "data.bin");
        assert_eq!(config.files[0].size, 5);
        assert_eq!(config.files[0].path, dir.path().join("data.bin"));
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn crlf_bom_and_surrounding_spaces_are_tolerated() {
        let (_dir, overrides) = with_file("\u{feff} localhost:80 \r\n Bob Smith \r\ndata.bin\r\n");
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.server.host, Host::Name("localhost".into()));
        assert_eq!(config.name.unwrap().as_str(), "Bob Smith");
    }

    #[test]
    fn each_malformed_line_is_named() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "missing"),
            ("\nalice\ndata.bin\n", 1, "empty"),
            ("127.0.0.1\nalice\ndata.bin\n", 1, "no port"),
            (
                "127.0.0.1:\nalice\ndata.bin\n",
                1,
                "port after ':' is missing",
            ),
            ("127.0.0.1:70000\nalice\ndata.bin\n", 1, "out of range"),
            ("127.0.0.1:0\nalice\ndata.bin\n", 1, "port 0"),
            ("127.0.0.1:http\nalice\ndata.bin\n", 1, "not a number"),
            ("300.1.1.1:1256\nalice\ndata.bin\n", 1, "not a valid IPv4"),
            ("::1:1256\nalice\ndata.bin\n", 1, "brackets"),
            ("[::1:1256\nalice\ndata.bin\n", 1, "closing ']'"),
            ("[::g]:1256\nalice\ndata.bin\n", 1, "not a valid IPv6"),
            ("[::1]\nalice\ndata.bin\n", 1, "no port"),
            ("bad_host:1256\nalice\ndata.bin\n", 1, "not allowed"),
            ("-bad.example:1256\nalice\ndata.bin\n", 1, "starts or ends"),
            (":1256\nalice\ndata.bin\n", 1, "before ':' is empty"),
            // No line 2: me.info may name the user; line 3 is missing all the same.
            ("127.0.0.1:1256\n", 3, "missing"),
            ("127.0.0.1:1256\n   \ndata.bin\n", 2, "empty"),
            ("127.0.0.1:1256\nzoë\ndata.bin\n", 2, "printable ASCII"),
            (
                "127.0.0.1:1256\ntab\there\ndata.bin\n",
                2,
                "printable ASCII",
            ),
            ("127.0.0.1:1256\nalice\n", 3, "missing"),
            ("127.0.0.1:1256\nalice\n\n", 3, "empty"),
            ("127.0.0.1:1256\nalice\nnope.bin\n", 3, "no such file"),
            ("127.0.0.1:1256\nalice\n.\n", 3, "is a directory"),
        ];
        for (content, line, words) in cases {
            let e = error_of(content);
            assert_eq!(line_of(&e), *line, "{content:?}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(words),
                "{content:?}: {text:?} should say {words:?}"
            );
            assert!(
                text.contains(&format!("line {line}")),
                "{content:?}: {text}"
            );
        }
        let long = format!("127.0.0.1:1256\n{}\ndata.bin\n", "x".repeat(101));
        let e = error_of(&long);
        assert_eq!(line_of(&e), 2);
        assert!(e.to_string().contains("101 characters"), "{e}");
        let ok = format!("127.0.0.1:1256\n{}\ndata.bin\n", "x".repeat(100));
        let (_d, o) = with_file(&ok);
        assert!(Config::load(&o).is_ok());
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TRANSFER_INFO),
            b"127.0.0.1:1\nal\xffice\nx\n",
        )
        .unwrap();
        let e = Config::load(&Cli::in_dir(dir.path())).unwrap_err();
        assert_eq!(line_of(&e), 2);
        assert!(e.to_string().contains("UTF-8"));
    }

    #[test]
    fn flags_override_lines_and_are_named_in_errors() {
        // Line 1 is garbage but --server replaces it; file arguments replace line 3.
        let (dir, mut overrides) = with_file("garbage\nalice\nmissing.bin\n");
        overrides.server = Some("127.0.0.1:9".into());
        overrides.files = vec![dir.path().join("data.bin")];
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.server.port, 9);
        assert_eq!(config.name.as_ref().unwrap().as_str(), "alice");

        overrides.name = Some("bob".into());
        assert_eq!(
            Config::load(&overrides).unwrap().name.unwrap().as_str(),
            "bob"
        );

        overrides.server = Some("nope".into());
        let e = Config::load(&overrides).unwrap_err();
        assert_eq!(e.origin, Origin::Flag("--server"));

        overrides.server = Some("127.0.0.1:9".into());
        overrides.name = Some(String::new());
        assert_eq!(
            Config::load(&overrides).unwrap_err().origin,
            Origin::Flag("--name")
        );

        overrides.name = None;
        overrides.files = vec![dir.path().join("absent.bin")];
        let e = Config::load(&overrides).unwrap_err();
        assert!(matches!(e.origin, Origin::Argument(_)));
        assert!(e.to_string().contains("no such file"));
    }

    #[test]
    fn transfer_info_is_optional_when_flags_say_everything() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        std::fs::write(&file, b"x").unwrap();
        let mut overrides = Cli::in_dir(dir.path());
        overrides.server = Some("127.0.0.1:5".into());
        overrides.files = vec![file];
        let config = Config::load(&overrides).unwrap();
        assert!(config.name.is_none());
        overrides.server = None;
        let e = Config::load(&overrides).unwrap_err();
        assert!(matches!(e.origin, Origin::TransferInfo(_)));
        assert!(e.to_string().contains("--server"), "{e}");
    }

    #[test]
    fn pace_raises_its_packet_size_like_the_default_does() {
        // 100 MB: more than 65,535 packets of the 1024 bytes --pace starts from.
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.iso");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(100_000_000)
            .unwrap();
        let mut overrides = Cli::in_dir(dir.path());
        overrides.server = Some("127.0.0.1:5".into());
        overrides.files = vec![big.clone()];
        overrides.options.pace = Some(std::time::Duration::from_millis(2));
        let plan = Config::load(&overrides).unwrap().files[0].plan;
        assert_eq!(plan.encrypted_size, 100_000_016);
        assert_eq!(plan.packet_content % 16, 0);
        assert!(plan.packet_content > crate::cli::PACED_PACKET_CONTENT);
        // Raised only as far as needed: 16 bytes less would need too many packets.
        let packets = |size: usize| 100_000_016u64.div_ceil(size as u64);
        assert!(packets(plan.packet_content) <= 65_535);
        assert!(packets(plan.packet_content - 16) > 65_535);
        assert_eq!(u64::from(plan.total_packets), packets(plan.packet_content));

        // Small files keep the paced size; an explicit --packet-size is still exact.
        std::fs::write(&big, b"x").unwrap();
        let plan = Config::load(&overrides).unwrap().files[0].plan;
        assert_eq!(plan.packet_content, crate::cli::PACED_PACKET_CONTENT);
        overrides.options.packet_size = Some("64".parse().unwrap());
        let plan = Config::load(&overrides).unwrap().files[0].plan;
        assert_eq!(plan.packet_content, 64);
        std::fs::File::create(&big)
            .unwrap()
            .set_len(100_000_000)
            .unwrap();
        let e = Config::load(&overrides).unwrap_err();
        assert!(e.to_string().contains("--packet-size 64"), "{e}");
    }

    /// `-r` applies to the folder on line 3 as to one given as an argument.
    #[test]
    fn a_folder_on_line_3_is_sent_with_r() {
        let (dir, mut overrides) = with_file("127.0.0.1:1256\nalice\nphotos\n");
        std::fs::create_dir_all(dir.path().join("photos/2026")).unwrap();
        std::fs::write(dir.path().join("photos/a.jpg"), b"a").unwrap();
        std::fs::write(dir.path().join("photos/2026/b.jpg"), b"b").unwrap();
        let e = Config::load(&overrides).unwrap_err();
        assert_eq!(line_of(&e), 3);
        assert!(e.to_string().contains("is a directory"), "{e}");
        overrides.recursive = true;
        let config = Config::load(&overrides).unwrap();
        let mut labels: Vec<&str> = config.files.iter().map(|f| f.label.as_str()).collect();
        labels.sort_unstable();
        // Named by their path below the folder, as for a folder given as an argument.
        assert_eq!(labels, ["2026/b.jpg", "a.jpg"]);
        // An empty folder is refused, naming line 3.
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        std::fs::write(
            dir.path().join(TRANSFER_INFO),
            "127.0.0.1:1256\nalice\nempty\n",
        )
        .unwrap();
        let e = Config::load(&overrides).unwrap_err();
        assert_eq!(line_of(&e), 3);
        assert!(e.to_string().contains("no regular file"), "{e}");
    }

    /// Only the lines no flag replaces are read: garbage on a replaced line, or a
    /// transfer.info that cannot be read when flags say everything, is no error.
    #[test]
    fn lines_replaced_by_flags_are_not_checked() {
        let (dir, mut overrides) = with_file("127.0.0.1:1256\nalice\n");
        let info = dir.path().join(TRANSFER_INFO);
        std::fs::write(&info, b"127.0.0.1:1256\nalice\n/home/j\xe9r\xf4me/a.txt\n").unwrap();
        overrides.files = vec![dir.path().join("data.bin")];
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.name.unwrap().as_str(), "alice");
        // Only the address: the name is left to me.info (or to --name at registration).
        std::fs::write(&info, "127.0.0.1:1256\n").unwrap();
        assert_eq!(Config::load(&overrides).unwrap().name, None);
        // A line that is used is checked: not UTF-8, it is named.
        std::fs::write(&info, b"127.0.0.1:1256\n\xffalice\n").unwrap();
        let e = Config::load(&overrides).unwrap_err();
        assert_eq!(line_of(&e), 2);
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        // Every line replaced: transfer.info is not read at all.
        std::fs::remove_file(&info).unwrap();
        std::fs::create_dir(&info).unwrap();
        overrides.server = Some("127.0.0.1:9".into());
        overrides.name = Some("bob".into());
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.name.unwrap().as_str(), "bob");
    }

    #[test]
    fn extra_lines_are_warned_about() {
        let (_dir, overrides) = with_file("127.0.0.1:1256\nalice\ndata.bin\nmore\n\n");
        let config = Config::load(&overrides).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].contains("line 4"));
    }

    #[test]
    fn recursive_sends_leave_out_the_client_state_but_named_files_are_sent() {
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("client");
        std::fs::create_dir_all(client.join("servers/h_1")).unwrap();
        for file in [
            "me.info",
            "priv.key",
            "me.server",
            ".sfc-client.lock",
            "priv.key.00112233445566778899aabbccddeeff.bak",
            "servers/h_1/priv.key",
            "report.txt",
        ] {
            std::fs::write(client.join(file), b"x").unwrap();
        }
        let client_arg = client.to_str().unwrap();
        let parse = |args: &[&str]| {
            let mut line = vec!["sfc-client", "--dir", client_arg, "-s", "127.0.0.1:1"];
            line.extend(args);
            Config::load(&Cli::try_parse_from(line).unwrap())
        };
        let labels = |config: &Config| -> Vec<String> {
            config
                .files
                .iter()
                .map(|f| f.label.as_str().to_owned())
                .collect()
        };

        let config = parse(&["-r", client_arg]).unwrap();
        assert_eq!(labels(&config), ["report.txt"]);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        let warning = &config.warnings[0];
        for words in [
            client_arg,
            "6 of the client's own files",
            "priv.key",
            "servers/",
        ] {
            assert!(warning.contains(words), "{warning:?} should say {words:?}");
        }
        let parent = dir.path().to_str().unwrap();
        let config = parse(&["-r", parent]).unwrap();
        assert_eq!(labels(&config), ["client/report.txt"]);

        // Named on the command line, the key is sent: the user asked for it.
        let key = client.join("priv.key");
        let config = parse(&["-r", key.to_str().unwrap()]).unwrap();
        assert_eq!(labels(&config), ["priv.key"]);

        let servers = client.join("servers");
        let e = parse(&["-r", servers.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("never sends"), "{e}");
    }
}
