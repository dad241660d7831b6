//! The files of a batch: each checked before anything is sent (a regular, readable file
//! the protocol can carry), its label (the name stored on the server) and its packet
//! plan; directories walked with `-r` (leaving out the client's own state); labels that
//! would overwrite each other refused.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sfc_proto::Name;

use crate::store::{self, SERVERS_DIR};
use crate::upload::{self, PacketSizing, Plan};

/// A file to send: path, label sent as `file_name`, size when checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileToSend {
    /// The path to read.
    pub path: PathBuf,
    /// The label sent to the server: the file's base name, its path below the folder
    /// given with `-r`, or the name given with `--as`.
    pub label: Name,
    /// Its size when it was checked.
    pub size: u64,
    /// How it is cut into packets (for that size).
    pub plan: Plan,
}

/// Checks that `path` is a regular, readable file the protocol can carry in packets sized by
/// `packet_size`, and derives its label (the base name, which must be printable ASCII) and
/// its packet plan.
pub fn check_file(path: &Path, packet_size: PacketSizing) -> Result<FileToSend, String> {
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => format!("cannot be read: {e}"),
    })?;
    if metadata.is_dir() {
        return Err("is a directory, not a file (with -r the files below it are sent)".to_owned());
    }
    if !metadata.is_file() {
        return Err("is not a regular file".to_owned());
    }
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => "is not readable (permission denied)".to_owned(),
        _ => format!("cannot be opened: {e}"),
    })?;
    let size = metadata.len();
    if holds_more_than(file, size) {
        // Sent as its size says, it would arrive short (empty, for most) and be confirmed.
        return Err(format!(
            "holds more than the {size} bytes its size says (a file the system does not size, such as one under /proc or /sys, or one growing now): copy it to a regular file and send that"
        ));
    }
    let plan = upload::plan(size, packet_size)?;
    let base = path
        .file_name()
        .ok_or_else(|| "has no file name".to_owned())?;
    let base = base.to_str().ok_or_else(|| {
        "has a file name that is not valid text; only printable ASCII file names can be sent"
            .to_owned()
    })?;
    let label = parse_label(base)?;
    Ok(FileToSend {
        path: path.to_owned(),
        label,
        size,
        plan,
    })
}

/// Whether `file` goes on past `size` bytes (a read there is not the end of the file).
/// A file that cannot be read there is left to the send, which reports it.
fn holds_more_than(mut file: File, size: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(size)).is_ok() && matches!(file.read(&mut byte), Ok(1))
}

/// A name to store a file under: printable ASCII, at most 254 bytes.
pub fn parse_label(text: &str) -> Result<Name, String> {
    Name::new(text).map_err(|e| {
        format!(
            "its name {text:?} cannot be sent ({e}); only printable ASCII names of at most 254 \
             bytes can be sent"
        )
    })
}

/// What a walk of a folder found: regular files with their paths below it (`/`
/// separated), the symbolic links it did not follow, and the client's own files it left
/// out.
#[derive(Debug, Default)]
pub struct Walk {
    /// (path, path below the folder), in name order.
    pub files: Vec<(PathBuf, String)>,
    /// Symbolic links left out (without `--follow-symlinks`).
    pub skipped_links: Vec<PathBuf>,
    /// Symbolic links to nothing (their target does not exist), left out with
    /// `--follow-symlinks`.
    pub broken_links: Vec<PathBuf>,
    /// The client's state left out: files [`store::is_state_file`] names in the client's
    /// folder, and its `servers/` folder (as one entry).
    pub skipped_state: Vec<PathBuf>,
}

/// The client's folder (`--dir`), canonical, whose state a walk leaves out wherever the
/// walk meets it: by name in the folder, or through a path or link that resolves there;
/// and the folder where a key that could not be saved there goes
/// ([`store::save_fallback`]: the system's temporary folder).
struct ClientFolder {
    dir: Option<PathBuf>,
    servers: Option<PathBuf>,
    fallback: Option<PathBuf>,
    /// (device, inode) of the state files in the folder: the same file reached under
    /// another name (a hard link, a bind mount of the folder) is left out too.
    state_files: Vec<(u64, u64)>,
}

impl ClientFolder {
    /// A folder that does not exist holds no state.
    fn find(dir: &Path, fallback: &Path) -> ClientFolder {
        let dir = std::fs::canonicalize(dir).ok();
        ClientFolder {
            servers: dir.as_ref().map(|dir| dir.join(SERVERS_DIR)),
            state_files: dir.as_deref().map(state_file_ids).unwrap_or_default(),
            dir,
            fallback: std::fs::canonicalize(fallback).ok(),
        }
    }

    /// True for a regular file that is one of the state files under another name.
    fn is_state_file_elsewhere(&self, path: &Path) -> bool {
        !self.state_files.is_empty()
            && std::fs::metadata(path)
                .ok()
                .and_then(|meta| file_id(&meta))
                .is_some_and(|id| self.state_files.contains(&id))
    }

    /// True for a path (with a canonical parent) that is the client's state.
    fn holds(&self, real: &Path) -> bool {
        let in_folder = |folder: &Option<PathBuf>, named: fn(&str) -> bool| {
            folder.as_deref().is_some_and(|folder| {
                real.parent() == Some(folder)
                    && real
                        .file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(named)
            })
        };
        self.servers
            .as_deref()
            .is_some_and(|servers| real.starts_with(servers))
            || in_folder(&self.dir, store::is_state_file)
            || in_folder(&self.fallback, store::is_fallback_key)
    }
}

/// (device, inode) of the client's state files directly in `dir`.
fn state_file_ids(dir: &Path) -> Vec<(u64, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_str().is_some_and(store::is_state_file))
        .filter_map(|entry| entry.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .filter_map(|meta| file_id(&meta))
        .collect()
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Every regular file below `root`, in name order, each with its path relative to `root`.
/// Symbolic links are left out unless `follow_symlinks`; then a link to a folder already
/// being walked (a loop) is left out too. Other special files (sockets, FIFOs) are left
/// out always, and so is the state of the client whose folder is `client_dir` (a user
/// sending `-r .` from it does not mean to send its private key).
pub fn walk(root: &Path, follow_symlinks: bool, client_dir: &Path) -> io::Result<Walk> {
    walk_leaving_out(
        root,
        follow_symlinks,
        &ClientFolder::find(client_dir, &std::env::temp_dir()),
    )
}

fn walk_leaving_out(root: &Path, follow_symlinks: bool, client: &ClientFolder) -> io::Result<Walk> {
    let mut walk = Walk::default();
    let real_root = std::fs::canonicalize(root)?;
    if client.holds(&real_root) {
        walk.skipped_state.push(root.to_owned());
        return Ok(walk);
    }
    let mut open = vec![real_root];
    walk_into(root, "", follow_symlinks, client, &mut open, &mut walk)?;
    Ok(walk)
}

fn walk_into(
    dir: &Path,
    prefix: &str,
    follow: bool,
    client: &ClientFolder,
    open: &mut Vec<PathBuf>,
    walk: &mut Walk,
) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        .map_err(at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    let real_dir = open.last().cloned().unwrap_or_default();
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{prefix}{name}");
        // By name first: a link named priv.key in the client's folder is its key, wherever
        // it points.
        if client.holds(&real_dir.join(entry.file_name())) {
            walk.skipped_state.push(path);
            continue;
        }
        let mut kind = entry.file_type().map_err(at(&path))?;
        if kind.is_symlink() {
            if !follow {
                walk.skipped_links.push(path);
                continue;
            }
            let target = match std::fs::canonicalize(&path) {
                Ok(target) => target,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    walk.broken_links.push(path);
                    continue;
                }
                Err(error) => return Err(at(&path)(error)),
            };
            if client.holds(&target) {
                walk.skipped_state.push(path);
                continue;
            }
            kind = std::fs::metadata(&path).map_err(at(&path))?.file_type();
        }
        if kind.is_dir() {
            let real = std::fs::canonicalize(&path).map_err(at(&path))?;
            if open.contains(&real) {
                walk.skipped_links.push(path);
                continue;
            }
            open.push(real);
            walk_into(&path, &format!("{relative}/"), follow, client, open, walk)?;
            open.pop();
        } else if kind.is_file() {
            if client.is_state_file_elsewhere(&path) {
                walk.skipped_state.push(path);
                continue;
            }
            walk.files.push((path, relative));
        }
    }
    Ok(())
}

/// An I/O error of the walk, naming the entry it happened at (not only the folder the
/// walk started from).
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |error| io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// The first two files that would be stored under the same name (the server keeps one
/// file per name and client: the second would replace the first).
pub fn same_label(files: &[FileToSend]) -> Option<(&FileToSend, &FileToSend)> {
    let mut seen: HashMap<&str, &FileToSend> = HashMap::new();
    for file in files {
        if let Some(first) = seen.insert(file.label.as_str(), file) {
            return Some((first, file));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that reads past the size it reports (procfs sizes its files 0) is refused
    /// before anything is sent: sent as sized it would arrive empty and be confirmed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_that_holds_more_than_its_size_is_refused() {
        let proc_file = Path::new("/proc/self/status");
        assert_eq!(std::fs::metadata(proc_file).unwrap().len(), 0);
        let e = check_file(proc_file, PacketSizing::default()).unwrap_err();
        assert!(e.contains("holds more than the 0 bytes"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("regular.bin");
        std::fs::write(&regular, b"exactly this").unwrap();
        assert_eq!(
            check_file(&regular, PacketSizing::default()).unwrap().size,
            12
        );
    }

    #[test]
    fn file_labels_must_be_printable_ascii() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("naïve.txt");
        std::fs::write(&file, b"x").unwrap();
        let e = check_file(&file, PacketSizing::default()).unwrap_err();
        assert!(e.contains("printable ASCII"), "{e}");
        let ok = dir.path().join("with space.txt");
        std::fs::write(&ok, b"x").unwrap();
        assert_eq!(
            check_file(&ok, PacketSizing::default())
                .unwrap()
                .label
                .as_str(),
            "with space.txt"
        );
    }

    #[test]
    fn walks_list_regular_files_below_a_folder_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        for file in ["z.txt", "b/a.txt", "b/c/d.txt"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("z.txt"), root.join("link.txt")).unwrap();
            std::os::unix::fs::symlink(&root, root.join("b/loop")).unwrap();
        }
        let found = walk(&root, false, dir.path()).unwrap();
        let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["b/a.txt", "b/c/d.txt", "z.txt"]);
        #[cfg(unix)]
        {
            assert_eq!(found.skipped_links.len(), 2);
            let found = walk(&root, true, dir.path()).unwrap();
            let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
            assert_eq!(labels, ["b/a.txt", "b/c/d.txt", "link.txt", "z.txt"]);
            assert_eq!(found.skipped_links, vec![root.join("b/loop")]);
        }
    }

    /// With `--follow-symlinks`, a link to nothing is left out (and reported), not an
    /// error for the whole folder; an entry that cannot be followed (a link to itself) is
    /// named in the error.
    #[cfg(unix)]
    #[test]
    fn walks_leave_out_broken_links_and_name_what_they_cannot_follow() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        make_files(&root, &["a.txt", "sub/b.txt"]);
        std::os::unix::fs::symlink(root.join("gone"), root.join("dangling")).unwrap();
        let found = walk(&root, true, dir.path()).unwrap();
        let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["a.txt", "sub/b.txt"]);
        assert_eq!(found.broken_links, vec![root.join("dangling")]);
        let looping = root.join("sub/self");
        std::os::unix::fs::symlink(&looping, &looping).unwrap();
        let error = walk(&root, true, dir.path()).unwrap_err().to_string();
        assert!(error.contains(&looping.display().to_string()), "{error}");
        // Not followed: only a link left out.
        assert_eq!(
            walk(&root, false, dir.path()).unwrap().skipped_links.len(),
            2
        );
    }

    /// Writes each file (and its folders) below `root`.
    fn make_files(root: &Path, files: &[&str]) {
        for file in files {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
    }

    const STATE: [&str; 10] = [
        "me.info",
        "priv.key",
        "me.server",
        "me.pending",
        ".sfc-client.lock",
        "me.info.00112233445566778899aabbccddeeff.bak",
        "priv.key.00112233445566778899aabbccddeeff.bak",
        "priv.key.old.bak",
        ".priv.key.Ab12cd.tmp",
        "servers/127.0.0.1_1256/priv.key",
    ];

    /// The key under another name (a hard link elsewhere in the tree) is still the key.
    #[test]
    #[cfg(unix)]
    fn walks_leave_out_a_hard_link_to_the_client_key() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let client = dir.path().join("client");
        make_files(&client, &["priv.key", "me.info"]);
        make_files(&top, &["a.txt", "copy-of-notes.txt"]);
        std::fs::hard_link(client.join("priv.key"), top.join("backup.bin")).unwrap();
        let found = walk(&top, false, &client).unwrap();
        let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["a.txt", "copy-of-notes.txt"]);
        assert_eq!(found.skipped_state, vec![top.join("backup.bin")]);
    }

    /// A key the client could not save in its folder goes to the system's temporary
    /// folder (`store::save_fallback`): `-r` of that folder leaves it out too, and only it.
    #[test]
    fn walks_leave_out_a_fallback_key_in_the_temporary_folder() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("tmp");
        let key = "sfc-client-alice-00112233445566778899aabbccddeeff.key";
        let temporary = ".sfc-client-bob-ffeeddccbbaa99887766554433221100.key.Ab12cd.tmp";
        // A user's own files, named almost like one.
        let own = ["notes.key", "sfc-client-config.key", "sfc-client-x-00.key"];
        make_files(&temp, &[key, temporary, "a.txt"]);
        make_files(&temp, &own);
        make_files(&temp, &[&format!("sub/{key}")]);
        let client = ClientFolder::find(&dir.path().join("client"), &temp);
        let found = walk_leaving_out(&temp, false, &client).unwrap();
        let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "a.txt",
                "notes.key",
                "sfc-client-config.key",
                "sfc-client-x-00.key",
                &format!("sub/{key}")
            ],
            "only the temporary folder itself holds fallback keys, and only the client's"
        );
        assert_eq!(found.skipped_state.len(), 2, "{:?}", found.skipped_state);
    }

    #[test]
    fn walks_leave_out_the_client_state_only_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let client = top.join("client");
        make_files(&client, &STATE);
        // Not the client's: named like its files, or almost.
        make_files(&client, &["notes.txt", "me.info.bak", "priv.key.TXT.bak"]);
        make_files(
            &top,
            &["other/me.info", "other/priv.key", "other/servers/a.txt"],
        );
        let kept = [
            "client/me.info.bak",
            "client/notes.txt",
            "client/priv.key.TXT.bak",
            "other/me.info",
            "other/priv.key",
            "other/servers/a.txt",
        ];
        let labels =
            |found: &Walk| -> Vec<String> { found.files.iter().map(|(_, l)| l.clone()).collect() };
        let found = walk(&top, false, &client).unwrap();
        assert_eq!(labels(&found), kept);
        let mut skipped: Vec<PathBuf> = STATE
            .iter()
            .filter(|f| !f.starts_with("servers/"))
            .map(|f| client.join(f))
            .chain([client.join("servers")])
            .collect();
        skipped.sort();
        let mut found_skipped = found.skipped_state.clone();
        found_skipped.sort();
        assert_eq!(found_skipped, skipped);

        // The same folder however it is named: with `..`, or through a link.
        let found = walk(
            &client.join("../client"),
            false,
            &top.join("other/../client"),
        )
        .unwrap();
        assert_eq!(
            labels(&found),
            ["me.info.bak", "notes.txt", "priv.key.TXT.bak"]
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&client, dir.path().join("alias")).unwrap();
            let found = walk(&top, false, &dir.path().join("alias")).unwrap();
            assert_eq!(labels(&found), kept);
            // Followed links into the client's folder are its files too.
            std::os::unix::fs::symlink(client.join("priv.key"), top.join("other/key")).unwrap();
            std::os::unix::fs::symlink(client.join("servers"), top.join("other/srv")).unwrap();
            let found = walk(&top.join("other"), true, &client).unwrap();
            assert_eq!(labels(&found), ["me.info", "priv.key", "servers/a.txt"]);
            assert_eq!(found.skipped_state.len(), 2);
            let found = walk(&client.join("servers"), true, &client).unwrap();
            assert!(found.files.is_empty());
        }
    }
}
