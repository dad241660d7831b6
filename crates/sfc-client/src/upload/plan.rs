//! The packet plan: how a file of a given size is cut into 828 packets (rule C2).
//!
//! Pure arithmetic, no I/O: [`DEFAULT_PACKET_CONTENT`] bytes of ciphertext per packet,
//! which every known server accepts (fewer with `--pace`), raised only as far as needed to
//! stay within [`MAX_PACKETS`] packets; or what the user asks for with `--packet-size`.

use sfc_proto::encrypted_size;
use sfc_proto::limits::{DEFAULT_PACKET_CONTENT, MAX_ORIG_FILE_SIZE, MAX_PACKETS};

/// Largest content size `--packet-size` accepts (buffers hold at least one packet).
pub const MAX_REQUESTED_PACKET_CONTENT: usize = 16 << 20;

/// How a file of a given size is cut into packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Plaintext size.
    pub orig_size: u32,
    /// Ciphertext size, sent as `content_size` in every packet (rule C3).
    pub encrypted_size: u32,
    /// Content bytes per packet (the last one may be shorter).
    pub packet_content: usize,
    /// Number of packets.
    pub total_packets: u16,
}

/// A `--packet-size` the client can use: from 1 to [`MAX_REQUESTED_PACKET_CONTENT`]
/// ciphertext bytes per packet. Checked once, when the command line is parsed; whether a
/// given file fits in 65,535 packets of it is part of that file's [`plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSize(usize);

impl PacketSize {
    /// A checked packet size.
    pub fn new(bytes: usize) -> Result<Self, String> {
        if bytes == 0 || bytes > MAX_REQUESTED_PACKET_CONTENT {
            return Err(format!(
                "must be from 1 to {MAX_REQUESTED_PACKET_CONTENT} bytes"
            ));
        }
        Ok(PacketSize(bytes))
    }

    /// The size in bytes.
    pub fn get(self) -> usize {
        self.0
    }
}

/// How the ciphertext bytes per packet are chosen (rule C2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketSizing {
    /// A default: this size, raised only as far as a file needs to fit in [`MAX_PACKETS`]
    /// packets.
    AtLeast(PacketSize),
    /// What the user asked for (`--packet-size`): a file that would need more than
    /// [`MAX_PACKETS`] packets of it is refused.
    Exactly(PacketSize),
}

impl Default for PacketSizing {
    /// [`DEFAULT_PACKET_CONTENT`], raised as needed.
    fn default() -> Self {
        PacketSizing::AtLeast(PacketSize(DEFAULT_PACKET_CONTENT))
    }
}

impl std::str::FromStr for PacketSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bytes: usize = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a number of bytes"))?;
        PacketSize::new(bytes)
    }
}

/// Chooses the content size per packet for `encrypted` ciphertext bytes (rule C2).
pub fn choose_packet_size(encrypted: u64, sizing: PacketSizing) -> Result<usize, String> {
    let max_packets = u64::from(MAX_PACKETS);
    match sizing {
        PacketSizing::Exactly(size) => {
            let size = size.get();
            let packets = encrypted.div_ceil(size as u64);
            if packets > max_packets {
                Err(format!(
                    "--packet-size {size} would cut the {encrypted}-byte ciphertext into {packets} \
                     packets, more than the {max_packets} the protocol allows; use at least {}",
                    encrypted.div_ceil(max_packets)
                ))
            } else {
                Ok(size)
            }
        }
        PacketSizing::AtLeast(size) => {
            let needed = encrypted.div_ceil(max_packets);
            if needed <= size.get() as u64 {
                Ok(size.get())
            } else {
                // Round up to whole AES blocks; still within the limit since it only grows.
                usize::try_from(needed.div_ceil(16) * 16)
                    .map_err(|_| "the file is too large for this machine".to_owned())
            }
        }
    }
}

/// Plans the upload of a file of `size` plaintext bytes; refuses sizes the protocol
/// cannot carry (content_size must fit in 32 bits).
pub fn plan(size: u64, sizing: PacketSizing) -> Result<Plan, String> {
    if size > u64::from(MAX_ORIG_FILE_SIZE) {
        return Err(format!(
            "is {size} bytes; the protocol carries at most {MAX_ORIG_FILE_SIZE} bytes per file \
             (the encrypted size must fit in 32 bits)"
        ));
    }
    let encrypted = encrypted_size(size);
    let packet_content = choose_packet_size(encrypted, sizing)?;
    let total = encrypted.div_ceil(packet_content as u64);
    Ok(Plan {
        orig_size: u32::try_from(size).map_err(|_| "too large".to_owned())?,
        encrypted_size: u32::try_from(encrypted).map_err(|_| "too large".to_owned())?,
        packet_content,
        total_packets: u16::try_from(total).map_err(|_| "too many packets".to_owned())?,
    })
}

/// `Some(n)` as `--packet-size n`, `None` as the default (tests only).
#[cfg(test)]
pub(crate) fn requested(bytes: Option<usize>) -> PacketSizing {
    bytes.map_or_else(PacketSizing::default, |n| {
        PacketSizing::Exactly(PacketSize::new(n).unwrap())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_packet_size_is_raised_only_when_needed() {
        assert_eq!(choose_packet_size(16, requested(None)), Ok(2048));
        let limit = 2048 * u64::from(MAX_PACKETS);
        assert_eq!(choose_packet_size(limit, requested(None)), Ok(2048));
        assert_eq!(choose_packet_size(limit + 1, requested(None)), Ok(2064));
        let largest = encrypted_size(u64::from(MAX_ORIG_FILE_SIZE));
        let size = choose_packet_size(largest, requested(None)).unwrap();
        assert_eq!(size % 16, 0);
        assert!(largest.div_ceil(size as u64) <= u64::from(MAX_PACKETS));
        assert!(largest.div_ceil(size as u64 - 16) > u64::from(MAX_PACKETS));
        // A smaller default (--pace) is raised the same way.
        let paced = PacketSizing::AtLeast(PacketSize::new(1024).unwrap());
        let limit = 1024 * u64::from(MAX_PACKETS);
        assert_eq!(choose_packet_size(limit, paced), Ok(1024));
        assert_eq!(choose_packet_size(limit + 1, paced), Ok(1040));
    }

    #[test]
    fn requested_packet_size_is_checked() {
        assert_eq!(choose_packet_size(1000, requested(Some(100))), Ok(100));
        assert_eq!(
            choose_packet_size(16, requested(Some(1 << 20))),
            Ok(1 << 20)
        );
        assert!(PacketSize::new(0).is_err());
        let e = choose_packet_size(65_536, requested(Some(1))).unwrap_err();
        assert!(e.contains("at least 2"), "{e}");
        assert!(PacketSize::new(MAX_REQUESTED_PACKET_CONTENT + 1).is_err());
        assert_eq!("64".parse::<PacketSize>().map(PacketSize::get), Ok(64));
        assert!("x".parse::<PacketSize>().is_err());
    }

    #[test]
    fn plans_refuse_files_too_large_for_32_bits() {
        let p = plan(0, requested(None)).unwrap();
        assert_eq!((p.encrypted_size, p.total_packets), (16, 1));
        let p = plan(17, requested(None)).unwrap();
        assert_eq!((p.encrypted_size, p.total_packets), (32, 1));
        let p = plan(4096, requested(Some(1000))).unwrap();
        assert_eq!((p.encrypted_size, p.total_packets), (4112, 5));
        assert!(plan(u64::from(MAX_ORIG_FILE_SIZE), requested(None)).is_ok());
        let e = plan(u64::from(MAX_ORIG_FILE_SIZE) + 1, requested(None)).unwrap_err();
        assert!(e.contains("32 bits"), "{e}");
    }
}
