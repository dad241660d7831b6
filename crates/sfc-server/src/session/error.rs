//! Why an upload cannot go on; each is answered with 1607 and logged with its text.

use crate::storage::StoreError;
use sfc_crypto::CryptoError;
use std::io;

/// A packet that cannot continue its upload, or content that cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The lease no longer holds an upload.
    #[error("upload already closed")]
    Closed,
    /// Content beyond the packet's announced length.
    #[error("more content than the packet announced")]
    MoreThanAnnounced,
    /// The CBC decryptor refused the content.
    #[error("decryption failed: {0}")]
    Decryption(CryptoError),
    /// A packet header arrived while the previous packet's content was still due.
    #[error("the previous packet was not complete")]
    PreviousIncomplete,
    /// Packets must come in order.
    #[error("packet {got} arrived where packet {expected} was expected")]
    OutOfOrder {
        /// The packet's number.
        got: u16,
        /// The number expected.
        expected: u32,
    },
    /// `total_packets` must stay the same.
    #[error("total_packets changed from {was} to {now}")]
    TotalChanged {
        /// Before.
        was: u16,
        /// This packet's.
        now: u16,
    },
    /// `orig_file_size` must stay the same.
    #[error("orig_file_size changed from {was} to {now}")]
    SizeChanged {
        /// Before.
        was: u32,
        /// This packet's.
        now: u32,
    },
    /// The file name must stay the same.
    #[error("file name changed from {was:?} to {now:?}")]
    NameChanged {
        /// Before.
        was: String,
        /// This packet's.
        now: String,
    },
    /// The packet header is inconsistent with its content.
    #[error("{0}")]
    Packet(#[from] sfc_proto::PacketError),
    /// More ciphertext than the file's size allows.
    #[error("packets carry more than the {encrypted} encrypted bytes of a {orig}-byte file")]
    TooMuchContent {
        /// Encrypted size of the file.
        encrypted: u64,
        /// `orig_file_size`.
        orig: u32,
    },
    /// Bytes after the file's encrypted size that are not all zero (rule S11).
    #[error(
        "the bytes after the file's {encrypted} encrypted bytes must be zero padding, \
         and are not"
    )]
    NonZeroPadding {
        /// The file's encrypted size.
        encrypted: u64,
    },
    /// Another packet took the upload's registry slot meanwhile.
    #[error("upload abandoned: its slot was taken")]
    SlotTaken,
}

/// Why a complete upload was not stored (the stored version, if any, is kept).
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// Fewer or more ciphertext bytes than the file's size needs.
    #[error("received {received} encrypted bytes; a {orig}-byte file has {encrypted}")]
    WrongLength {
        /// Received.
        received: u64,
        /// `orig_file_size`.
        orig: u32,
        /// Expected.
        encrypted: u64,
    },
    /// Bad padding or the like.
    #[error("cannot decrypt the file: {0}")]
    Decryption(CryptoError),
    /// The plaintext is not `orig_file_size` bytes long.
    #[error("decrypted {plaintext} bytes but orig_file_size is {orig}")]
    PlaintextLength {
        /// Decrypted.
        plaintext: u64,
        /// `orig_file_size`.
        orig: u32,
    },
    /// Writing the temporary file failed.
    #[error("cannot write the file: {0}")]
    Write(io::Error),
    /// Reading the existing row failed.
    #[error("cannot look up the file: {0}")]
    Lookup(StoreError),
    /// Committing a row failed (before the file was moved).
    #[error("cannot record the file: {0}")]
    Record(StoreError),
    /// Moving the file into place failed.
    #[error("cannot store the file: {0}")]
    Store(io::Error),
    /// Committing the row failed after the file was moved; `undo` tells whether the
    /// earlier state could be put back.
    #[error("cannot record the file: {error}; {}", match undo {
        Ok(()) => "the earlier state is restored".to_string(),
        Err(undo) => format!("cannot restore the earlier state: {undo}"),
    })]
    RecordAfterMove {
        /// The commit's error.
        error: StoreError,
        /// Putting the earlier state back.
        undo: Result<(), io::Error>,
    },
    /// Committing the row failed after the file was moved, and the database could not be
    /// asked whether the commit had happened after all (only its answer lost): the new
    /// file, which no earlier row names, stays where a committed row would look for it.
    #[error(
        "cannot record the file: {error}; the database cannot tell whether the row was committed, \
         so the file is left in place (removed at start-up if no row names it, unless start-up \
         finds more unrecorded files than a crash leaves)"
    )]
    RecordUncertain {
        /// The commit's error.
        error: StoreError,
    },
}

impl FinishError {
    /// True when the database or the file store failed (not the client's bytes).
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            FinishError::Write(_)
                | FinishError::Lookup(_)
                | FinishError::Record(_)
                | FinishError::Store(_)
                | FinishError::RecordAfterMove { .. }
                | FinishError::RecordUncertain { .. }
        )
    }
}
