//! File labels → names on disk.
//!
//! A client's file name is a *label*, never a path (docs/PROTOCOL.md, rule S8): it is kept
//! as sent in `files.FileName` and echoed in 1603. The name of the stored file is derived
//! from it by [`disk_name`], which guarantees:
//!
//! - **Confinement.** The result is a single path component: never empty, never `.` or
//!   `..`, never containing `/`, `\`, `:` or NUL, so joining it to the client's folder can
//!   never leave that folder.
//! - **Injectivity, even on case-insensitive filesystems.** Every byte outside a small
//!   safe set is percent-encoded as `%XX` (upper-case hex), `%` itself included, so plain
//!   percent-decoding gives the label back. Upper-case letters are encoded too: encoded
//!   names then contain letters only as lower-case literals or as upper-case hex digits
//!   right after a `%`, so two different labels never differ only in case on disk
//!   (NTFS, APFS).
//! - **Portability.** No leading `.` (hidden files, `.`/`..`), no trailing `.` or space
//!   (Windows strips them), no Windows device names (`CON`, `NUL`, `COM1`, … also with an
//!   extension): their first character is encoded.
//! - **At most 255 bytes** (the usual file name limit). An encoded name that would be
//!   longer is cut to [`HASHED_PREFIX_LEN`] bytes (never inside a `%XX`) and followed by
//!   `~` and the SHA-256 of the label in hex. `~` is not in the safe set, so such names
//!   never collide with plain encoded names, and the hash keeps them apart from each other.
//!
//! Temporary upload files start with `.` ([`TEMP_PREFIX`]), which an encoded name never
//! does, so a temporary file can never overwrite or be mistaken for a stored file.
//!
//! A store shared by several servers (S3) keeps every upload under a name of its own,
//! [`versioned`]: the disk name, `~v` and 32 hex digits (a UUIDv7: [`version_millis`]
//! dates it), at most 255 bytes too: a disk name over 221 bytes is first cut to 156 and
//! followed by `~` and its own SHA-256, as above. Neither kind of disk name ends
//! that way (plain names have no `~`; hashed ones end in `~` and 64 hex digits), so
//! the (possibly shortened) disk name can be read back, is the same for every version of
//! a file, and versions never collide with plain names.

use sha2::{Digest, Sha256};

/// Longest name produced (bytes): the common file-name limit of ext4, XFS, NTFS, APFS.
pub const MAX_DISK_NAME_LEN: usize = 255;
/// Length of the readable prefix kept in a hashed name: 190 + `~` + 64 hex digits = 255.
pub const HASHED_PREFIX_LEN: usize = MAX_DISK_NAME_LEN - 1 - 64;
/// Prefix of temporary upload files; never produced by [`disk_name`].
pub const TEMP_PREFIX: &str = ".upload-";

/// Bytes kept literally (apart from the position rules above).
fn is_safe(byte: u8) -> bool {
    byte.is_ascii_lowercase()
        || byte.is_ascii_digit()
        || matches!(
            byte,
            b'-' | b'_' | b'.' | b'+' | b',' | b'=' | b'@' | b'(' | b')'
        )
}

/// Windows device names, reserved with any extension.
const RESERVED: [&str; 22] = [
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

fn is_reserved_stem(label: &[u8]) -> bool {
    let stem_len = label.iter().position(|&b| b == b'.').unwrap_or(label.len());
    let stem = label.get(..stem_len).unwrap_or_default();
    // Windows also ignores trailing spaces before the extension ("CON .txt").
    let trimmed_len = stem
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(0, |last| last + 1);
    let stem = stem.get(..trimmed_len).unwrap_or_default();
    RESERVED
        .iter()
        .any(|reserved| stem.eq_ignore_ascii_case(reserved.as_bytes()))
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digit = |nibble: u8| char::from(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
    out.push('%');
    out.push(digit(byte >> 4));
    out.push(digit(byte & 0x0f));
}

/// The percent-encoded form of `label`, before the length rule.
fn encode(label: &[u8]) -> String {
    let mut out = String::with_capacity(label.len() * 3);
    let last = label.len().saturating_sub(1);
    let reserved = is_reserved_stem(label);
    for (i, &byte) in label.iter().enumerate() {
        let positional =
            (i == 0 && (byte == b'.' || reserved)) || (i == last && (byte == b'.' || byte == b' '));
        if is_safe(byte) && !positional {
            out.push(char::from(byte));
        } else {
            push_escaped(&mut out, byte);
        }
    }
    out
}

/// The name on disk for a file label; see the module documentation for its guarantees.
///
/// The label is what the client sent; sfc-proto has already checked that it is 1..=254
/// bytes of printable ASCII, but this function is total over any bytes.
pub fn disk_name(label: &str) -> String {
    let bytes = label.as_bytes();
    let encoded = encode(bytes);
    if encoded.len() <= MAX_DISK_NAME_LEN && !encoded.is_empty() {
        return encoded;
    }
    hashed(&encoded, HASHED_PREFIX_LEN, bytes)
}

/// The first `keep` bytes of `encoded` (never cut inside a `%XX`), `~`, and the SHA-256
/// of `hashed` in hex.
fn hashed(encoded: &str, keep: usize, hashed: &[u8]) -> String {
    // Cut at a character boundary that does not split an escape: back up to at most two
    // bytes if one of them starts an escape.
    let mut cut = keep.min(encoded.len());
    let head = encoded.as_bytes();
    for back in 1..=2 {
        if cut >= back && head.get(cut - back) == Some(&b'%') {
            cut -= back;
            break;
        }
    }
    let prefix = encoded.get(..cut).unwrap_or_default();
    let digest = Sha256::digest(hashed);
    let mut name = String::with_capacity(cut + 1 + 64);
    name.push_str(prefix);
    name.push('~');
    for byte in digest {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// Separates a disk name from its version in [`versioned`] names.
const VERSION_SEPARATOR: &str = "~v";

/// Longest disk name that takes a version as it is: with `~v` and 32 hex digits, 255.
const MAX_VERSIONED_STEM: usize = MAX_DISK_NAME_LEN - VERSION_SEPARATOR.len() - 32;

/// The name of one version of the file stored as `disk_name` (see the module docs), at
/// most [`MAX_DISK_NAME_LEN`] bytes: a longer disk name is first cut and hashed as
/// [`disk_name`] cuts a long label (S3 servers that keep objects as files refuse a longer
/// last key segment: SeaweedFS answers `KeyTooLongError`). The S3 store's versions are
/// UUIDv7 values, so [`version_millis`] dates them.
pub fn versioned(disk_name: &str, version: u128) -> String {
    format!(
        "{}{VERSION_SEPARATOR}{version:032x}",
        version_stem(disk_name)
    )
}

/// What [`versioned`] puts before the version: `disk_name`, or its shortened form when
/// it is over 221 bytes. Also the same for a name read back from a key written before
/// names were shortened (a store that took longer keys), so that its versions and the
/// later ones are seen as one file's.
pub fn version_stem(disk_name: &str) -> std::borrow::Cow<'_, str> {
    if disk_name.len() <= MAX_VERSIONED_STEM {
        std::borrow::Cow::Borrowed(disk_name)
    } else {
        std::borrow::Cow::Owned(hashed(
            disk_name,
            MAX_VERSIONED_STEM - 1 - 64,
            disk_name.as_bytes(),
        ))
    }
}

/// The disk name and version of a [`versioned`] name; `None` for any other name.
pub fn split_version(name: &str) -> Option<(&str, u128)> {
    let (disk_name, version) = name.rsplit_once(VERSION_SEPARATOR)?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if version.len() != 32 || !version.bytes().all(lower_hex) {
        return None;
    }
    Some((disk_name, u128::from_str_radix(version, 16).ok()?))
}

/// When a version was made, in milliseconds since the Unix epoch, if it is a UUIDv7
/// (RFC 9562: the time in its first 48 bits, version 7, variant `10`). `None` for
/// other values, such as the random (v4) versions of servers before the S3 store
/// dated them.
pub fn version_millis(version: u128) -> Option<u64> {
    let is_v7 = (version >> 76) & 0xf == 7 && (version >> 62) & 0b11 == 0b10;
    is_v7.then_some((version >> 80) as u64)
}

/// The disk name of a [`versioned`] name; any other name as it is. (The server never
/// needs it: rows name the versions; tests look stored files up by disk name.)
#[cfg(any(test, feature = "testing"))]
pub fn unversioned(name: &str) -> &str {
    split_version(name).map_or(name, |(disk_name, _)| disk_name)
}

/// True for names this module may have produced (used to skip foreign files); false for
/// temporary files and anything else.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(name: &str) -> Vec<u8> {
        let bytes = name.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn examples() {
        assert_eq!(disk_name("report.pdf"), "report.pdf");
        assert_eq!(disk_name("Report.PDF"), "%52eport.%50%44%46");
        assert_eq!(disk_name("dir/x.bin"), "dir%2Fx.bin");
        assert_eq!(disk_name("/home/u/x.bin"), "%2Fhome%2Fu%2Fx.bin");
        assert_eq!(disk_name("C:\\x\\y.bin"), "%43%3A%5Cx%5Cy.bin");
        assert_eq!(disk_name("."), "%2E");
        assert_eq!(disk_name(".."), "%2E%2E");
        assert_eq!(disk_name("../../etc/passwd"), "%2E.%2F..%2Fetc%2Fpasswd");
        assert_eq!(disk_name(".hidden"), "%2Ehidden");
        assert_eq!(disk_name("a."), "a%2E");
        assert_eq!(disk_name("a "), "a%20");
        assert_eq!(disk_name("a b"), "a%20b");
        assert_eq!(disk_name("100%"), "100%25");
        assert_eq!(disk_name("con"), "%63on");
        assert_eq!(disk_name("nul.txt"), "%6Eul.txt");
        assert_eq!(disk_name("com1.tar.gz"), "%63om1.tar.gz");
        assert_eq!(disk_name("console"), "console");
        assert_eq!(disk_name("a~b"), "a%7Eb");
        assert_eq!(disk_name("lpt9 .x"), "%6Cpt9%20.x");
    }

    #[test]
    fn long_names_are_hashed_and_bounded() {
        let long = "A".repeat(254);
        let name = disk_name(&long);
        // 63 whole escapes (189 bytes) + `~` + 64 hex digits.
        assert_eq!(name.len(), 254);
        assert_eq!(disk_name(&"b".repeat(254)).len(), 254);
        assert_eq!(
            disk_name(&format!("{}%", "b".repeat(253))).len(),
            MAX_DISK_NAME_LEN
        );
        assert!(name.contains('~'));
        assert!(name.starts_with("%41%41"));
        // The prefix never ends inside an escape.
        let prefix = name.split('~').next().unwrap();
        assert_eq!(prefix.len() % 3, 0);
        let other = format!("{}B", "A".repeat(253));
        assert_ne!(disk_name(&other), name);
        // 255 encoded bytes still fit without hashing.
        let fits = "a".repeat(254);
        assert_eq!(disk_name(&fits), fits);
    }

    #[test]
    fn versions_name_their_disk_name() {
        let name = versioned("a.bin", 0xab);
        assert_eq!(name, format!("a.bin~v{:032x}", 0xab));
        assert_eq!(unversioned(&name), "a.bin");
        let hashed = disk_name(&"A".repeat(254));
        // Too long to take a version as it is: every version shares its shortened form.
        let last = versioned(&hashed, u128::MAX);
        let first = versioned(&hashed, 1);
        assert_eq!(unversioned(&last), unversioned(&first));
        assert!(unversioned(&last).len() <= MAX_VERSIONED_STEM);
        // Disk names (hashed ones too) and malformed versions are not versions.
        assert_eq!(unversioned(&hashed), hashed);
        for other in ["a.bin~v12", "a.bin~vxyz00000000000000000000000000000"] {
            assert_eq!(unversioned(other), other);
        }
        assert!(!is_temp_name(&name));
        assert_eq!(split_version(&name), Some(("a.bin", 0xab)));
        assert_eq!(split_version("a.bin"), None);
    }

    #[test]
    fn uuid_v7_versions_are_dated_and_others_are_not() {
        let made = uuid::Uuid::now_v7();
        let (seconds, nanos) = made.get_timestamp().unwrap().to_unix();
        let millis = seconds * 1000 + u64::from(nanos / 1_000_000);
        assert_eq!(version_millis(made.as_u128()), Some(millis));
        let (_, version) = split_version(&versioned("a.bin", made.as_u128())).unwrap();
        assert_eq!(version_millis(version), Some(millis));
        // A later one is dated later (or the same millisecond).
        let later = uuid::Uuid::now_v7().as_u128();
        assert!(version_millis(later) >= Some(millis));
        for undated in [uuid::Uuid::new_v4().as_u128(), 0, u128::MAX, 0xab] {
            assert_eq!(version_millis(undated), None, "{undated:032x}");
        }
    }

    /// The longest names: a label whose disk name is hashed (255 bytes) and one whose
    /// encoded name is just over what a version fits; each version within 255 bytes.
    #[test]
    fn versions_of_long_names_fit_255_bytes() {
        for label in ["x".repeat(254), "X".repeat(74), "x".repeat(222)] {
            let name = disk_name(&label);
            let version = versioned(&name, u128::MAX);
            assert_eq!(version.len(), MAX_DISK_NAME_LEN, "{label}: {version}");
            let (stem, at) = split_version(&version).unwrap();
            assert_eq!(at, u128::MAX);
            assert!(stem.len() < name.len(), "{stem}");
            let (_, digest) = stem.rsplit_once('~').unwrap();
            assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let fits = "x".repeat(MAX_VERSIONED_STEM);
        assert_eq!(versioned(&fits, 1), format!("{fits}~v{:032x}", 1));
    }

    #[test]
    fn temp_names_never_collide_with_disk_names() {
        assert!(is_temp_name(".upload-1234.tmp"));
        assert!(!is_temp_name(&disk_name(".upload-1234.tmp")));
    }

    fn label() -> impl Strategy<Value = String> {
        // Printable ASCII (what sfc-proto admits), biased towards troublesome characters.
        let printable = proptest::collection::vec(0x20u8..=0x7e, 1..=254);
        let tricky = proptest::collection::vec(
            prop::sample::select(vec![
                b'.', b' ', b'%', b'/', b'\\', b':', b'~', b'a', b'A', b'C', b'o', b'n',
            ]),
            1..=12,
        );
        prop_oneof![printable, tricky].prop_map(|bytes| String::from_utf8(bytes).unwrap())
    }

    fn check_shape(name: &str) {
        assert!(!name.is_empty());
        assert!(name.len() <= MAX_DISK_NAME_LEN, "{name}");
        assert!(name != "." && name != "..");
        assert!(!name.starts_with('.'));
        assert!(!name.ends_with('.') && !name.ends_with(' '));
        for forbidden in ['/', '\\', ':', '\0', '*', '?', '"', '<', '>', '|', ' '] {
            assert!(!name.contains(forbidden), "{name:?} contains {forbidden:?}");
        }
        assert!(!is_reserved_stem(name.as_bytes()), "{name}");
    }

    proptest! {
        #[test]
        fn encoding_is_confined_and_injective(a in label(), b in label()) {
            let (na, nb) = (disk_name(&a), disk_name(&b));
            check_shape(&na);
            check_shape(&nb);
            if a != b {
                prop_assert_ne!(&na, &nb);
                prop_assert_ne!(na.to_ascii_lowercase(), nb.to_ascii_lowercase());
            }
            if !na.contains('~') {
                prop_assert_eq!(decode(&na), a.as_bytes().to_vec());
            }
        }

        #[test]
        fn neighbours_differ(a in label()) {
            // Labels that differ in one character or only in case.
            let upper = a.to_ascii_uppercase();
            let lower = a.to_ascii_lowercase();
            if upper != lower {
                prop_assert_ne!(disk_name(&upper).to_ascii_lowercase(), disk_name(&lower).to_ascii_lowercase());
            }
            let dotted = format!("{a}.");
            prop_assert_ne!(disk_name(&dotted), disk_name(&a));
            check_shape(&disk_name(&dotted));
        }

        #[test]
        fn versions_keep_labels_apart(
            a in label(),
            b in label(),
            v in any::<u128>(),
            w in any::<u128>(),
        ) {
            // A version of one label's name is at most 255 bytes, is never another
            // label's name nor a version of it, and every version of a label gives the
            // same disk name back: its own, unless that had to be shortened.
            let (na, nb) = (disk_name(&a), disk_name(&b));
            prop_assert_eq!(unversioned(&na), na.as_str());
            let version = versioned(&na, v);
            check_shape(&version);
            let other_version = versioned(&na, w);
            prop_assert_eq!(unversioned(&version), unversioned(&other_version));
            if na.len() <= MAX_VERSIONED_STEM {
                prop_assert_eq!(unversioned(&version), na.as_str());
            }
            prop_assert_ne!(&version, &nb);
            if a != b {
                let version_of_b = versioned(&nb, v);
                prop_assert_ne!(unversioned(&version), unversioned(&version_of_b));
            }
        }
    }
}
