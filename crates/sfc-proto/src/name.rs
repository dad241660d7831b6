//! The fixed 255-byte string field (user names and file names).

use crate::error::NameError;
use crate::limits::{MAX_NAME_LEN, NAME_FIELD_LEN};
use std::sync::Arc;

/// A validated string for a 255-byte field: 1..=254 bytes of printable ASCII
/// (0x20..=0x7e), no NUL.
///
/// Encoding pads with NULs on the right. Decoding takes the bytes between the leading and
/// trailing NUL runs, so both the usual right padding and the original C++ client's left
/// padding are accepted (docs/PROTOCOL.md, rule S3).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates a name given as text.
    pub fn new(text: &str) -> Result<Self, NameError> {
        validate(text.as_bytes(), 0)?;
        Ok(Name(text.into()))
    }

    /// Decodes a field of exactly 255 bytes (left or right NUL padding).
    pub fn decode_field(field: &[u8; NAME_FIELD_LEN]) -> Result<Self, NameError> {
        let end = padding_starts(field);
        let start = padding_ends(field.get(..end).unwrap_or_default());
        if start == end {
            return Err(NameError::Empty);
        }
        let trimmed = field.get(start..end).ok_or(NameError::Empty)?;
        validate(trimmed, start)?;
        // validate() admitted only printable ASCII, which is valid UTF-8.
        let text = std::str::from_utf8(trimmed).map_err(|_| NameError::Empty)?;
        Ok(Name(text.into()))
    }

    /// Encodes into a 255-byte field, NUL-padded on the right.
    pub fn encode_field(&self) -> [u8; NAME_FIELD_LEN] {
        let mut field = [0u8; NAME_FIELD_LEN];
        for (slot, byte) in field.iter_mut().zip(self.0.as_bytes()) {
            *slot = *byte;
        }
        field
    }

    /// Encodes into a 255-byte field, NUL-padded on the LEFT, as the original C++ client does.
    pub fn encode_field_left_padded(&self) -> [u8; NAME_FIELD_LEN] {
        let mut field = [0u8; NAME_FIELD_LEN];
        let offset = NAME_FIELD_LEN - self.0.len();
        for (slot, byte) in field.iter_mut().skip(offset).zip(self.0.as_bytes()) {
            *slot = *byte;
        }
        field
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// NUL bytes compared a chunk at a time: every file packet carries a 255-byte name field
/// that is mostly padding, and a byte-at-a-time scan of it was a visible part of a
/// packet's cost (BENCHMARKS.md, "CPU per GiB").
const PADDING_CHUNK: [u8; 16] = [0; 16];

/// Where the trailing NULs of `field` begin (its length if there are none).
fn padding_starts(field: &[u8]) -> usize {
    let mut end = field.len();
    while end >= PADDING_CHUNK.len()
        && field.get(end - PADDING_CHUNK.len()..end) == Some(&PADDING_CHUNK[..])
    {
        end -= PADDING_CHUNK.len();
    }
    while end > 0 && field.get(end - 1) == Some(&0) {
        end -= 1;
    }
    end
}

/// Where the leading NULs of `field` end (its length if it is all NULs).
fn padding_ends(field: &[u8]) -> usize {
    let mut start = 0;
    while field.get(start..start + PADDING_CHUNK.len()) == Some(&PADDING_CHUNK[..]) {
        start += PADDING_CHUNK.len();
    }
    while field.get(start) == Some(&0) {
        start += 1;
    }
    start
}

/// Printable ASCII only: the protocol's strings are ASCII, and control characters have no
/// place in a user name or a file label.
fn validate(bytes: &[u8], field_offset: usize) -> Result<(), NameError> {
    if bytes.is_empty() {
        return Err(NameError::Empty);
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: bytes.len() });
    }
    for (i, &byte) in bytes.iter().enumerate() {
        let offset = field_offset + i;
        if byte == 0 {
            return Err(NameError::InteriorNul { offset });
        }
        if !(0x20..=0x7e).contains(&byte) {
            return Err(NameError::NonPrintable { offset, byte });
        }
    }
    Ok(())
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Name({:?})", self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Name::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(bytes: &[u8], left: bool) -> [u8; NAME_FIELD_LEN] {
        let mut f = [0u8; NAME_FIELD_LEN];
        let offset = if left {
            NAME_FIELD_LEN - bytes.len()
        } else {
            0
        };
        f[offset..offset + bytes.len()].copy_from_slice(bytes);
        f
    }

    #[test]
    fn right_and_left_padding_decode_to_the_same_name() {
        let right = Name::decode_field(&field(b"alice", false)).unwrap();
        let left = Name::decode_field(&field(b"alice", true)).unwrap();
        assert_eq!(right.as_str(), "alice");
        assert_eq!(left, right);
        // Padding on both sides is also just padding.
        let mut both = [0u8; NAME_FIELD_LEN];
        both[10..15].copy_from_slice(b"alice");
        assert_eq!(Name::decode_field(&both).unwrap(), right);
    }

    #[test]
    fn encode_pads_on_the_right() {
        let f = Name::new("bob").unwrap().encode_field();
        assert_eq!(&f[..4], b"bob\0");
        assert!(f[3..].iter().all(|&b| b == 0));
        let l = Name::new("bob").unwrap().encode_field_left_padded();
        assert_eq!(&l[252..], b"bob");
        assert!(l[..252].iter().all(|&b| b == 0));
    }

    #[test]
    fn longest_name_is_254_bytes() {
        let long = "x".repeat(254);
        let name = Name::new(&long).unwrap();
        let f = name.encode_field();
        assert_eq!(f[254], 0);
        assert_eq!(Name::decode_field(&f).unwrap(), name);
        // Left-padded 254 bytes: one leading NUL.
        assert_eq!(
            Name::decode_field(&name.encode_field_left_padded()).unwrap(),
            name
        );
        assert_eq!(
            Name::new(&"x".repeat(255)),
            Err(NameError::TooLong { len: 255 })
        );
        assert_eq!(
            Name::decode_field(&[b'x'; NAME_FIELD_LEN]),
            Err(NameError::TooLong { len: 255 })
        );
    }

    #[test]
    fn invalid_fields_are_rejected_precisely() {
        assert_eq!(
            Name::decode_field(&[0; NAME_FIELD_LEN]),
            Err(NameError::Empty)
        );
        assert_eq!(
            Name::decode_field(&field(b"ab\0cd", false)),
            Err(NameError::InteriorNul { offset: 2 })
        );
        assert_eq!(
            Name::decode_field(&field(b"ab\ncd", false)),
            Err(NameError::NonPrintable {
                offset: 2,
                byte: b'\n'
            })
        );
        assert_eq!(
            Name::decode_field(&field("é".as_bytes(), false)),
            Err(NameError::NonPrintable {
                offset: 0,
                byte: 0xc3
            })
        );
        assert_eq!(
            Name::decode_field(&field(b"\x7f", true)),
            Err(NameError::NonPrintable {
                offset: 254,
                byte: 0x7f
            })
        );
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert!(Name::new("tab\there").is_err());
        assert!(Name::new("with space.txt").is_ok());
    }

    proptest::proptest! {
        /// The chunked scans find the padding where a byte-at-a-time scan does, for any
        /// mix of leading NULs, bytes (NULs among them) and trailing NULs.
        #[test]
        fn padding_is_found_where_a_byte_scan_finds_it(
            lead in 0usize..=NAME_FIELD_LEN,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=NAME_FIELD_LEN),
        ) {
            let mut f = [0u8; NAME_FIELD_LEN];
            for (slot, byte) in f.iter_mut().skip(lead).zip(&body) {
                *slot = *byte;
            }
            let start = f.iter().position(|&b| b != 0);
            let end = f.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
            proptest::prop_assert_eq!(padding_starts(&f), end);
            proptest::prop_assert_eq!(padding_ends(&f[..end]), start.unwrap_or(0));
            proptest::prop_assert_eq!(padding_ends(&f), start.unwrap_or(NAME_FIELD_LEN));
        }
    }
}
