//! The one error type of this crate.

/// Everything that can go wrong building the mesh CA, an identity or a TLS config.
///
/// Each variant names the input at fault (which PEM, which field) so that an operator reading
/// a log line knows what to fix without reading code.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input holds no usable block of the expected kind.
    #[error("{what}: {reason}")]
    Pem {
        /// Which PEM input, e.g. "CA certificate PEM".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate could not be parsed as X.509.
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The mesh CA certificate lacks what a CA needs.
    #[error("CA certificate is not a CA: {0}")]
    NotCa(&'static str),
    /// The mesh CA private key does not belong to the CA certificate.
    #[error("CA private key does not match the public key of the CA certificate")]
    KeyMismatch,
    /// A private key could not be loaded.
    #[error("{what}: {reason}")]
    Key {
        /// Which key, e.g. "CA private key PEM".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument is unusable (empty service list, a name that cannot go into a URI SAN...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The argument at fault.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// rcgen failed to generate a key or sign a certificate.
    #[error("{what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// BoringSSL refused to build a context or parse an input.
    #[error("{what}: {source}")]
    Ssl {
        /// What was being built or parsed.
        what: &'static str,
        /// BoringSSL's error queue.
        source: boring::error::ErrorStack,
    },
    /// A TLS handshake failed, was refused or timed out.
    #[error("TLS handshake with {peer} on {at}: {reason}")]
    Handshake {
        /// The peer's address.
        peer: std::net::SocketAddr,
        /// Where: `listener <name>` (server side) or `cluster <name>` (client side).
        at: String,
        /// What went wrong, in BoringSSL's words or as a certificate verdict.
        reason: String,
    },
    /// A certificate was to be issued by a CA loaded without its private key.
    #[error("the mesh CA's private key is not available here, so no certificate can be issued")]
    NoCaKey,
    /// The peer presented a valid certificate for a different mesh identity.
    #[error(
        "peer identity mismatch: expected URI SAN {}, certificate presents {presented:?}",
        expected.join(" or ")
    )]
    IdentityMismatch {
        /// The SPIFFE ids the connection accepts (a prefix followed by `*`).
        expected: Vec<String>,
        /// The URI SANs of the peer's leaf certificate.
        presented: Vec<String>,
    },
    /// A client certificate chains to the mesh CA but names no identity of the server's mesh
    /// (a CA shared by several meshes).
    #[error(
        "client certificate is not of mesh {mesh}: no URI SAN starts with spiffe://{mesh}/, it presents {presented:?}"
    )]
    ClientOfAnotherMesh {
        /// The mesh of the listener.
        mesh: String,
        /// The URI SANs of the client's leaf certificate.
        presented: Vec<String>,
    },
    /// A client refused under a SPIFFE trust (MeshIdentity): no SPIFFE id of it starts with
    /// the listener's prefix and chains to its trust domain's bundle.
    #[error(
        "client certificate is not trusted: no URI SAN under {prefix} whose trust domain's bundle it chains to, it presents {presented:?}"
    )]
    ClientNotTrusted {
        /// The SPIFFE id prefix the listener admits (`spiffe://<trust domain>/`).
        prefix: String,
        /// The URI SANs of the client's leaf certificate.
        presented: Vec<String>,
    },
}
