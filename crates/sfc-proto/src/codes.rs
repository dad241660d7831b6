//! Request and response codes.

use crate::error::DecodeError;

/// Request codes (client → server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RequestCode {
    /// 825: register a user name.
    Register = 825,
    /// 826: send the public key, receive an AES key.
    SendPublicKey = 826,
    /// 827: reconnect with a stored public key, receive a new AES key.
    Reconnect = 827,
    /// 828: one packet of an encrypted file.
    SendFile = 828,
    /// 900: checksum correct.
    ChecksumOk = 900,
    /// 901: checksum wrong, the file is about to be sent again.
    ChecksumRetry = 901,
    /// 902: checksum wrong for the last time, giving up.
    ChecksumFailed = 902,
}

impl RequestCode {
    /// All request codes, in protocol order.
    pub const ALL: [RequestCode; 7] = [
        RequestCode::Register,
        RequestCode::SendPublicKey,
        RequestCode::Reconnect,
        RequestCode::SendFile,
        RequestCode::ChecksumOk,
        RequestCode::ChecksumRetry,
        RequestCode::ChecksumFailed,
    ];

    /// The code's numeric value on the wire.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// A short human name for messages and logs, e.g. `send public key`.
    pub const fn name(self) -> &'static str {
        match self {
            RequestCode::Register => "register",
            RequestCode::SendPublicKey => "send public key",
            RequestCode::Reconnect => "reconnect",
            RequestCode::SendFile => "file packet",
            RequestCode::ChecksumOk => "checksum correct",
            RequestCode::ChecksumRetry => "checksum wrong, resending",
            RequestCode::ChecksumFailed => "checksum wrong, giving up",
        }
    }

    /// The code with its name, e.g. `826 (send public key)`; `Display` prints the number
    /// alone.
    pub fn described(self) -> Described<Self> {
        Described(self)
    }
}

impl TryFrom<u16> for RequestCode {
    type Error = DecodeError;

    fn try_from(code: u16) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_u16() == code)
            .ok_or(DecodeError::UnknownRequestCode(code))
    }
}

impl std::fmt::Display for RequestCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

/// Response codes (server → client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ResponseCode {
    /// 1600: registration succeeded.
    Registered = 1600,
    /// 1601: registration failed (name taken or invalid).
    RegistrationFailed = 1601,
    /// 1602: public key received; here is the wrapped AES key.
    PublicKeyAccepted = 1602,
    /// 1603: file (or intermediate packet) received; checksum.
    FileReceived = 1603,
    /// 1604: acknowledged (answers 900, 902, and on some servers 901).
    Ack = 1604,
    /// 1605: reconnect accepted; here is a new wrapped AES key.
    ReconnectAccepted = 1605,
    /// 1606: reconnect rejected; register again.
    ReconnectRejected = 1606,
    /// 1607: general server error.
    ServerError = 1607,
}

impl ResponseCode {
    /// All response codes, in protocol order.
    pub const ALL: [ResponseCode; 8] = [
        ResponseCode::Registered,
        ResponseCode::RegistrationFailed,
        ResponseCode::PublicKeyAccepted,
        ResponseCode::FileReceived,
        ResponseCode::Ack,
        ResponseCode::ReconnectAccepted,
        ResponseCode::ReconnectRejected,
        ResponseCode::ServerError,
    ];

    /// The code's numeric value on the wire.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// A short human name for messages and logs, e.g. `acknowledged`.
    pub const fn name(self) -> &'static str {
        match self {
            ResponseCode::Registered => "registered",
            ResponseCode::RegistrationFailed => "registration failed",
            ResponseCode::PublicKeyAccepted => "public key accepted",
            ResponseCode::FileReceived => "file received",
            ResponseCode::Ack => "acknowledged",
            ResponseCode::ReconnectAccepted => "reconnect accepted",
            ResponseCode::ReconnectRejected => "reconnect rejected",
            ResponseCode::ServerError => "general server error",
        }
    }

    /// The code with its name, e.g. `1604 (acknowledged)`; `Display` prints the number
    /// alone.
    pub fn described(self) -> Described<Self> {
        Described(self)
    }
}

impl TryFrom<u16> for ResponseCode {
    type Error = DecodeError;

    fn try_from(code: u16) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_u16() == code)
            .ok_or(DecodeError::UnknownResponseCode(code))
    }
}

impl std::fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

/// A code shown as its number and its name: `826 (send public key)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Described<C>(C);

impl std::fmt::Display for Described<RequestCode> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.as_u16(), self.0.name())
    }
}

impl std::fmt::Display for Described<ResponseCode> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0.as_u16(), self.0.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_errors() {
        for code in RequestCode::ALL {
            assert_eq!(RequestCode::try_from(code.as_u16()).unwrap(), code);
        }
        for code in ResponseCode::ALL {
            assert_eq!(ResponseCode::try_from(code.as_u16()).unwrap(), code);
        }
        assert_eq!(
            RequestCode::try_from(829),
            Err(DecodeError::UnknownRequestCode(829))
        );
        assert_eq!(
            RequestCode::try_from(1600),
            Err(DecodeError::UnknownRequestCode(1600))
        );
        assert_eq!(
            ResponseCode::try_from(825),
            Err(DecodeError::UnknownResponseCode(825))
        );
        assert_eq!(RequestCode::SendFile.as_u16(), 828);
        assert_eq!(ResponseCode::ServerError.as_u16(), 1607);
    }

    #[test]
    fn codes_have_human_names() {
        assert_eq!(
            RequestCode::SendPublicKey.described().to_string(),
            "826 (send public key)"
        );
        assert_eq!(
            ResponseCode::Ack.described().to_string(),
            "1604 (acknowledged)"
        );
        assert_eq!(RequestCode::SendFile.to_string(), "828");
        for code in RequestCode::ALL {
            assert!(!code.name().is_empty());
        }
        for code in ResponseCode::ALL {
            assert!(!code.name().is_empty());
        }
    }
}
