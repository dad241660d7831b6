//! Sizes and limits of the wire format, named once.

/// Protocol version this implementation speaks (and always sends in replies).
pub const PROTOCOL_VERSION: u8 = 3;

/// Size of a client ID on the wire: 16 raw bytes (a UUID).
pub const CLIENT_ID_LEN: usize = 16;
/// Fixed size of a string field (user name, file name).
pub const NAME_FIELD_LEN: usize = 255;
/// Longest string a field can carry: one byte is left for the terminating NUL.
pub const MAX_NAME_LEN: usize = NAME_FIELD_LEN - 1;
/// Size of the public key that clients send: RSA-1024, e = 17, X.509 SubjectPublicKeyInfo DER.
pub const PUBLIC_KEY_LEN: usize = 160;
/// Largest public-key field accepted in an 826 (docs/PROTOCOL.md, rules S6 and S13: SPKI
/// DER of up to 4096 bits is about 550 bytes; this leaves room for zero padding but bounds
/// the buffer).
pub const MAX_PUBLIC_KEY_FIELD_LEN: usize = 1024;

/// Request header: client_id (16) + version (1) + code (2) + payload_size (4).
pub const REQUEST_HEADER_LEN: usize = CLIENT_ID_LEN + 1 + 2 + 4;
/// Response header: version (1) + code (2) + payload_size (4).
pub const RESPONSE_HEADER_LEN: usize = 1 + 2 + 4;

/// Fixed part of an 828 payload: content_size u32, orig_file_size u32, packet_number u16,
/// total_packets u16, file_name (255). The content follows.
pub const FILE_PACKET_FIXED_LEN: usize = 4 + 4 + 2 + 2 + NAME_FIELD_LEN;
/// Largest number of packets one file can be sent in (`total_packets` is a u16).
pub const MAX_PACKETS: u16 = u16::MAX;
/// Largest encrypted file size (`content_size` is a u32).
pub const MAX_CONTENT_SIZE: u32 = u32::MAX;
/// Largest plaintext size whose encrypted size still fits `content_size`:
/// 16 * (n / 16 + 1) <= u32::MAX.
pub const MAX_ORIG_FILE_SIZE: u32 = u32::MAX - 16;

/// The strictest known server reads 4096 bytes per request, so a packet's content must
/// stay at or below this to fit every server (docs/PROTOCOL.md, rule C2).
pub const MAX_COMPATIBLE_PACKET_CONTENT: usize = 4096 - REQUEST_HEADER_LEN - FILE_PACKET_FIXED_LEN;
/// Default content bytes per packet: the size reported to work with every known server.
pub const DEFAULT_PACKET_CONTENT: usize = 2048;

/// Payload of 1603 carrying only the client ID (intermediate packet, docs/PROTOCOL.md, rule S2).
pub const FILE_RECEIVED_SHORT_LEN: usize = CLIENT_ID_LEN;
/// Payload of a full 1603: client_id, content_size u32, file_name (255), cksum u32.
pub const FILE_RECEIVED_LEN: usize = CLIENT_ID_LEN + 4 + NAME_FIELD_LEN + 4;
/// Largest wrapped AES key in 1602/1605 (RSA-4096 ciphertext).
pub const MAX_WRAPPED_KEY_LEN: usize = 512;
/// Largest response payload a client needs to read.
pub const MAX_RESPONSE_PAYLOAD: usize = CLIENT_ID_LEN + MAX_WRAPPED_KEY_LEN;
/// Longest content of a packet whose content_size is the whole encrypted size and that
/// is longer than that (zero padding after the file's last encrypted byte, rule S11).
pub const MAX_PADDED_CONTENT: u32 = 64 * 1024;
