//! The files of a batch: each checked before anything is sent (a regular, readable file
//! the protocol can carry), its label (the name stored on the server) and its packet
//! plan; directories walked with `-r`; labels that would overwrite each other refused.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use sfc_proto::Name;

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
    File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => "is not readable (permission denied)".to_owned(),
        _ => format!("cannot be opened: {e}"),
    })?;
    let size = metadata.len();
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
/// separated), and the symbolic links it did not follow.
#[derive(Debug, Default)]
pub struct Walk {
    /// (path, path below the folder), in name order.
    pub files: Vec<(PathBuf, String)>,
    /// Symbolic links left out (without `--follow-symlinks`).
    pub skipped_links: Vec<PathBuf>,
}

/// Every regular file below `root`, in name order, each with its path relative to `root`.
/// Symbolic links are left out unless `follow_symlinks`; then a link to a folder already
/// being walked (a loop) is left out too. Other special files (sockets, FIFOs) are left
/// out always.
pub fn walk(root: &Path, follow_symlinks: bool) -> io::Result<Walk> {
    let mut walk = Walk::default();
    let mut open = vec![std::fs::canonicalize(root)?];
    walk_into(root, "", follow_symlinks, &mut open, &mut walk)?;
    Ok(walk)
}

fn walk_into(
    dir: &Path,
    prefix: &str,
    follow: bool,
    open: &mut Vec<PathBuf>,
    walk: &mut Walk,
) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = format!("{prefix}{name}");
        let mut kind = entry.file_type()?;
        if kind.is_symlink() {
            if !follow {
                walk.skipped_links.push(path);
                continue;
            }
            kind = std::fs::metadata(&path)?.file_type();
        }
        if kind.is_dir() {
            let real = std::fs::canonicalize(&path)?;
            if open.contains(&real) {
                walk.skipped_links.push(path);
                continue;
            }
            open.push(real);
            walk_into(&path, &format!("{relative}/"), follow, open, walk)?;
            open.pop();
        } else if kind.is_file() {
            walk.files.push((path, relative));
        }
    }
    Ok(())
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
        let found = walk(&root, false).unwrap();
        let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["b/a.txt", "b/c/d.txt", "z.txt"]);
        #[cfg(unix)]
        {
            assert_eq!(found.skipped_links.len(), 2);
            let found = walk(&root, true).unwrap();
            let labels: Vec<&str> = found.files.iter().map(|(_, l)| l.as_str()).collect();
            assert_eq!(labels, ["b/a.txt", "b/c/d.txt", "link.txt", "z.txt"]);
            assert_eq!(found.skipped_links, vec![root.join("b/loop")]);
        }
    }
}
