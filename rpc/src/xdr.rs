//! XDR (RFC 4506) as libvirt uses it: big-endian 4-byte units, strings and opaque data padded to
//! a multiple of 4, optional values as a 0/1 discriminant, and SASL's `char data<N>` arrays.
//!
//! Decoding goes through a [`Reader`] cursor and never panics: every read checks what is left and
//! every length against its XDR bound before anything is allocated. Encoding appends to a
//! `Vec<u8>` and cannot fail; encoders do not check the bounds (values this crate decoded are
//! always within them).

/// Longest string libvirt accepts: `REMOTE_STRING_MAX` / `VIR_NET_MESSAGE_STRING_MAX`.
pub const STRING_MAX: u32 = 4_194_304;

/// Why an XDR payload could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    /// The payload ended in the middle of a value.
    #[error("the payload ended before the value it was decoding")]
    Truncated,
    /// A string, opaque or array length exceeds its XDR bound.
    #[error("a length of {len} exceeds the protocol's limit of {max}")]
    TooLong {
        /// The length on the wire.
        len: u32,
        /// The bound from the protocol definition.
        max: u32,
    },
    /// A string is not UTF-8.
    #[error("a string is not valid UTF-8")]
    BadUtf8,
    /// An optional-value or enum discriminant has a value the type does not define.
    #[error("discriminant {0} is not defined for this type")]
    BadDiscriminant(u32),
    /// An element of a `char` array is neither `0..=0xff` nor a sign-extended byte
    /// (`0xffffff80..=0xffffffff`).
    #[error("char array element {0:#010x} is not a byte")]
    BadChar(u32),
    /// The value was decoded but bytes were left after it.
    #[error("{0} bytes left after the value")]
    TrailingBytes(usize),
}

/// A value with an XDR encoding, in the style of rustls's `Codec`.
///
/// `'a` is the lifetime of the decoded buffer, so that a type may borrow from it (`&'a str`
/// does); owned types implement `Xdr<'a>` for every `'a`.
pub trait Xdr<'a>: Sized {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes one value at the reader's position, advancing past it.
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError>;

    /// The encoding of `self` as a new vector.
    fn to_xdr(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a value that must fill `bytes` exactly ([`XdrError::TrailingBytes`] otherwise).
    fn from_xdr(bytes: &'a [u8]) -> Result<Self, XdrError> {
        let mut r = Reader::new(bytes);
        let value = Self::decode(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

/// A cursor over an XDR payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

/// Padding after `len` bytes of string or opaque data.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Succeeds when every byte has been read.
    pub fn finish(&self) -> Result<(), XdrError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(XdrError::TrailingBytes(n)),
        }
    }

    /// Decodes a value of any [`Xdr`] type.
    pub fn read<T: Xdr<'a>>(&mut self) -> Result<T, XdrError> {
        T::decode(self)
    }

    /// The next `n` raw bytes, without padding.
    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let end = self.at.checked_add(n).ok_or(XdrError::Truncated)?;
        let bytes = self.buf.get(self.at..end).ok_or(XdrError::Truncated)?;
        self.at = end;
        Ok(bytes)
    }

    fn word(&mut self) -> Result<[u8; 4], XdrError> {
        let b = self.take(4)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// An `unsigned int`.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        self.word().map(u32::from_be_bytes)
    }

    /// An `int`.
    pub fn i32(&mut self) -> Result<i32, XdrError> {
        self.word().map(i32::from_be_bytes)
    }

    /// An `unsigned hyper`.
    pub fn u64(&mut self) -> Result<u64, XdrError> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    /// A `hyper`.
    pub fn i64(&mut self) -> Result<i64, XdrError> {
        self.u64().map(|v| v as i64)
    }

    /// An XDR `bool`: exactly 0 or 1.
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            d => Err(XdrError::BadDiscriminant(d)),
        }
    }

    /// A length word, checked against `max` and against what is left (each element taking at
    /// least `unit` bytes) before the caller allocates anything for it.
    fn length(&mut self, max: u32, unit: usize) -> Result<usize, XdrError> {
        let len = self.u32()?;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        let len = len as usize;
        if len.saturating_mul(unit) > self.remaining() {
            return Err(XdrError::Truncated);
        }
        Ok(len)
    }

    /// Variable-length `opaque data<max>`: length, bytes, padding.
    pub fn opaque(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        let len = self.length(max, 1)?;
        let bytes = self.take(len)?;
        self.take(padding(len))?;
        Ok(bytes)
    }

    /// Fixed-length `opaque data[N]` (e.g. a UUID): `N` bytes and padding.
    pub fn opaque_fixed<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        self.take(padding(N))?;
        Ok(out)
    }

    /// `string<max>`, which must be UTF-8.
    pub fn string_max(&mut self, max: u32) -> Result<&'a str, XdrError> {
        std::str::from_utf8(self.opaque(max)?).map_err(|_| XdrError::BadUtf8)
    }

    /// `remote_nonnull_string`: a string of at most [`STRING_MAX`] bytes.
    pub fn string(&mut self) -> Result<&'a str, XdrError> {
        self.string_max(STRING_MAX)
    }

    /// `remote_string`: an optional [`string`](Self::string) (0 = NULL, 1 = present).
    pub fn opt_string(&mut self) -> Result<Option<&'a str>, XdrError> {
        match self.u32()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            d => Err(XdrError::BadDiscriminant(d)),
        }
    }

    /// `char data<max>`: a count, then one 4-byte int per byte.
    ///
    /// Each element is taken as its low byte. Both a zero-extended (`0x000000XX`) and a
    /// sign-extended (`0xffffff80..=0xffffffff`, as x86 libvirt sends bytes ≥ 0x80) element are
    /// accepted; anything else is [`XdrError::BadChar`].
    pub fn char_array(&mut self, max: u32) -> Result<Vec<u8>, XdrError> {
        let count = self.length(max, 4)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let v = self.u32()?;
            if v > 0xff && v < 0xffff_ff80 {
                return Err(XdrError::BadChar(v));
            }
            out.push(v as u8);
        }
        Ok(out)
    }
}

/// Appends an `unsigned int`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends an `int`.
pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends an `unsigned hyper`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a `hyper`.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends an XDR `bool` (1 or 0).
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    put_u32(out, u32::from(v));
}

/// Appends variable-length opaque data: length, bytes, zero padding.
pub fn put_opaque(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    put_opaque_fixed(out, bytes);
}

/// Appends fixed-length opaque data: the bytes and zero padding, no length.
pub fn put_opaque_fixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len() + padding(bytes.len()), 0);
}

/// Appends a string: length, bytes, zero padding; no NUL.
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    put_opaque(out, s.as_bytes());
}

/// Appends a `remote_string`: `0` for `None`, `1` and the string otherwise.
pub fn put_opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_u32(out, 0),
        Some(s) => {
            put_u32(out, 1);
            put_string(out, s);
        }
    }
}

/// Appends `char data<>`: the count, then each byte as a sign-extended 4-byte int, as libvirt
/// built with a signed `char` (x86) sends it.
pub fn put_char_array(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.reserve(bytes.len() * 4);
    for &b in bytes {
        put_i32(out, i32::from(b as i8));
    }
}

impl<'a> Xdr<'a> for u32 {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, *self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.u32()
    }
}

impl<'a> Xdr<'a> for i32 {
    fn encode(&self, out: &mut Vec<u8>) {
        put_i32(out, *self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.i32()
    }
}

impl<'a> Xdr<'a> for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, *self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.u64()
    }
}

impl<'a> Xdr<'a> for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        put_i64(out, *self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.i64()
    }
}

impl<'a> Xdr<'a> for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bool(out, *self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.bool()
    }
}

/// `remote_nonnull_string`, borrowed from the payload.
impl<'a> Xdr<'a> for &'a str {
    fn encode(&self, out: &mut Vec<u8>) {
        put_string(out, self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.string()
    }
}

/// `remote_nonnull_string`, copied.
impl<'a> Xdr<'a> for String {
    fn encode(&self, out: &mut Vec<u8>) {
        put_string(out, self);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.string().map(str::to_owned)
    }
}

/// An XDR optional value (`T *`): `0` for `None`, `1` and the value otherwise.
impl<'a, T: Xdr<'a>> Xdr<'a> for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => put_u32(out, 0),
            Some(v) => {
                put_u32(out, 1);
                v.encode(out);
            }
        }
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        match r.u32()? {
            0 => Ok(None),
            1 => T::decode(r).map(Some),
            d => Err(XdrError::BadDiscriminant(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_length_prefixed_and_padded_to_four_bytes() {
        let mut out = Vec::new();
        put_string(&mut out, "test:///default");
        assert_eq!(out.len(), 4 + 16);
        assert_eq!(&out[..4], &[0, 0, 0, 15]);
        assert_eq!(out[19], 0);
        let mut r = Reader::new(&out);
        assert_eq!(r.string(), Ok("test:///default"));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn an_empty_string_is_present_and_differs_from_null() {
        let mut out = Vec::new();
        put_opt_string(&mut out, Some(""));
        assert_eq!(out, [0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(Option::<&str>::from_xdr(&out), Ok(Some("")));
        assert_eq!(Option::<&str>::from_xdr(&[0, 0, 0, 0]), Ok(None));
    }

    #[test]
    fn a_value_that_runs_past_the_end_is_truncated() {
        assert_eq!(Reader::new(&[0, 0, 1]).u32(), Err(XdrError::Truncated));
        assert_eq!(
            Reader::new(&[0, 0, 0, 5, b'a', b'b']).string(),
            Err(XdrError::Truncated)
        );
        // The padding after the bytes must be there too.
        assert_eq!(
            Reader::new(&[0, 0, 0, 1, b'a']).string(),
            Err(XdrError::Truncated)
        );
        assert_eq!(Reader::new(&[0, 0, 0, 1]).u64(), Err(XdrError::Truncated));
    }

    #[test]
    fn lengths_over_the_bound_are_refused_before_reading_the_data() {
        let mut too_long = Vec::new();
        put_u32(&mut too_long, STRING_MAX + 1);
        assert_eq!(
            Reader::new(&too_long).string(),
            Err(XdrError::TooLong {
                len: STRING_MAX + 1,
                max: STRING_MAX
            })
        );
        assert_eq!(
            Reader::new(&[0, 0, 0, 5, 0, 0, 0, 0]).char_array(4),
            Err(XdrError::TooLong { len: 5, max: 4 })
        );
    }

    #[test]
    fn a_char_array_claiming_more_elements_than_the_payload_holds_allocates_nothing() {
        // 65536 elements claimed, 4 bytes present.
        let r = Reader::new(&[0, 1, 0, 0, 0, 0, 0, 0x41]).char_array(65536);
        assert_eq!(r, Err(XdrError::Truncated));
    }

    #[test]
    fn char_array_elements_must_be_bytes() {
        let mut bad = Vec::new();
        put_u32(&mut bad, 1);
        put_u32(&mut bad, 0x100);
        assert_eq!(
            Reader::new(&bad).char_array(16),
            Err(XdrError::BadChar(0x100))
        );
        let mut bad = Vec::new();
        put_u32(&mut bad, 1);
        put_u32(&mut bad, 0xffff_ff7f);
        assert_eq!(
            Reader::new(&bad).char_array(16),
            Err(XdrError::BadChar(0xffff_ff7f))
        );
    }

    #[test]
    fn strings_must_be_utf8() {
        let mut out = Vec::new();
        put_opaque(&mut out, &[0xff, 0xfe]);
        assert_eq!(Reader::new(&out).string(), Err(XdrError::BadUtf8));
    }

    #[test]
    fn optional_values_take_only_zero_or_one() {
        assert_eq!(
            Option::<u32>::from_xdr(&[0, 0, 0, 2, 0, 0, 0, 0]),
            Err(XdrError::BadDiscriminant(2))
        );
        assert_eq!(
            Reader::new(&[0, 0, 0, 2]).opt_string(),
            Err(XdrError::BadDiscriminant(2))
        );
        assert_eq!(
            bool::from_xdr(&[0, 0, 0, 7]),
            Err(XdrError::BadDiscriminant(7))
        );
    }

    #[test]
    fn from_xdr_refuses_trailing_bytes_and_decode_leaves_them() {
        let bytes = [0, 0, 0, 9, 0, 0, 0, 1];
        assert_eq!(u32::from_xdr(&bytes), Err(XdrError::TrailingBytes(4)));
        let mut r = Reader::new(&bytes);
        assert_eq!(r.read::<u32>(), Ok(9));
        assert_eq!((r.position(), r.remaining()), (4, 4));
    }

    #[test]
    fn primitives_round_trip() {
        assert_eq!(u64::from_xdr(&9_000_000u64.to_xdr()), Ok(9_000_000));
        assert_eq!(i64::from_xdr(&(-2i64).to_xdr()), Ok(-2));
        assert_eq!(i32::from_xdr(&(-1i32).to_xdr()), Ok(-1));
        assert_eq!(9_000_000u64.to_xdr(), [0, 0, 0, 0, 0x00, 0x89, 0x54, 0x40]);
        assert_eq!(String::from_xdr(&"héllo".to_xdr()), Ok("héllo".into()));
        let mut r = Reader::new(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(r.opaque_fixed::<16>().map(|u| u[15]), Ok(16));
    }
}
