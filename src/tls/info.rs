//! What a finished handshake settled, as a service sees it.

/// The TLS side of a connection, for a handler (`Io::tls`): the name the client asked
/// for, the protocol ALPN chose, the version and suite, and the client's certificate
/// when the listener verifies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the client sent (SNI), lowercase as rustls reports it.
    pub sni: Option<String>,
    /// The protocol chosen by ALPN (`b"http/1.1"`), if the client offered one the
    /// listener lists.
    pub alpn: Option<Vec<u8>>,
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub version: &'static str,
    /// The cipher suite, by its IANA name (`"TLS13_AES_128_GCM_SHA256"`).
    pub cipher: &'static str,
    /// The client resumed an earlier session (a ticket) instead of a full handshake.
    pub resumed: bool,
    /// The client's leaf certificate (DER), verified against `client_ca`.
    pub peer_certificate: Option<Vec<u8>>,
}
