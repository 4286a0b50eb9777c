//! Limits every decoder checks before it allocates.

/// Sizes and counts a receiver accepts. Every length and count read from the wire is
/// compared with one of these before any memory is set aside for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest value of a frame's length prefix (header + body + CRC).
    pub max_frame_len: u32,
    /// Most attributes in one message (also the most names in a GET or a delete list).
    pub max_attributes: usize,
    /// Longest attribute name, in bytes.
    pub max_name_len: usize,
    /// Longest attribute value (and PING payload), in bytes.
    pub max_value_len: usize,
    /// Longest token string, in bytes.
    pub max_token_len: usize,
    /// Longest free-text field: client name, password, error message, stat name.
    pub max_text_len: usize,
}

impl Limits {
    /// Defaults: 4 MiB frames, 1024 attributes, 256-byte names, 1 MiB values,
    /// 256-byte tokens, 1 KiB text fields.
    pub const DEFAULT: Limits = Limits {
        max_frame_len: 4 * 1024 * 1024,
        max_attributes: 1024,
        max_name_len: 256,
        max_value_len: 1024 * 1024,
        max_token_len: 256,
        max_text_len: 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
