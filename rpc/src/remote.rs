//! Typed messages of the REMOTE program (`remote_protocol.x`): the ones exchanged before
//! CONNECT_OPEN (authentication, keepalive negotiation, CONNECT_OPEN itself).

use crate::xdr::{put_char_array, put_i32, put_u32, Reader, Xdr, XdrError};

/// `REMOTE_PROC_CONNECT_OPEN`.
pub const PROC_CONNECT_OPEN: u32 = 1;
/// `REMOTE_PROC_CONNECT_CLOSE`.
pub const PROC_CONNECT_CLOSE: u32 = 2;
/// `REMOTE_PROC_CONNECT_GET_HOSTNAME`.
pub const PROC_CONNECT_GET_HOSTNAME: u32 = 59;
/// `REMOTE_PROC_CONNECT_SUPPORTS_FEATURE`.
pub const PROC_CONNECT_SUPPORTS_FEATURE: u32 = 60;
/// `REMOTE_PROC_AUTH_LIST`.
pub const PROC_AUTH_LIST: u32 = 66;
/// `REMOTE_PROC_AUTH_SASL_INIT`.
pub const PROC_AUTH_SASL_INIT: u32 = 67;
/// `REMOTE_PROC_AUTH_SASL_START`.
pub const PROC_AUTH_SASL_START: u32 = 68;
/// `REMOTE_PROC_AUTH_SASL_STEP`.
pub const PROC_AUTH_SASL_STEP: u32 = 69;
/// `REMOTE_PROC_AUTH_POLKIT`.
pub const PROC_AUTH_POLKIT: u32 = 70;
/// `REMOTE_PROC_CONNECT_GET_LIB_VERSION`.
pub const PROC_CONNECT_GET_LIB_VERSION: u32 = 157;

/// `VIR_DRV_FEATURE_PROGRAM_KEEPALIVE`: the feature that starts the server's keepalive.
pub const FEATURE_PROGRAM_KEEPALIVE: u32 = 10;
/// `VIR_DRV_FEATURE_REMOTE_EVENT_CALLBACK`.
pub const FEATURE_REMOTE_EVENT_CALLBACK: u32 = 14;
/// `VIR_DRV_FEATURE_REMOTE_CLOSE_CALLBACK`.
pub const FEATURE_REMOTE_CLOSE_CALLBACK: u32 = 15;

/// `REMOTE_DRIVER_OPEN_RO`, bit 0 of CONNECT_OPEN `flags`: the daemon opens the connection
/// read-only and enforces it.
pub const OPEN_FLAG_READ_ONLY: u32 = 1;

/// `REMOTE_AUTH_SASL_DATA_MAX`: most bytes in one SASL message.
pub const REMOTE_AUTH_SASL_DATA_MAX: u32 = 65_536;
/// `REMOTE_AUTH_TYPE_LIST_MAX`: most entries in an AUTH_LIST reply.
pub const REMOTE_AUTH_TYPE_LIST_MAX: u32 = 20;

/// `remote_connect_open_args`: the CALL of CONNECT_OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOpenArgs {
    /// The connection URI as the client forwards it (`qemu:///system`); `Some("")` asks the
    /// daemon to probe, `None` is NULL.
    pub name: Option<String>,
    /// `REMOTE_DRIVER_OPEN_*` bits; see [`OPEN_FLAG_READ_ONLY`].
    pub flags: u32,
}

impl<'a> Xdr<'a> for ConnectOpenArgs {
    fn encode(&self, out: &mut Vec<u8>) {
        self.name.encode(out);
        put_u32(out, self.flags);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            name: r.read()?,
            flags: r.u32()?,
        })
    }
}

/// `remote_auth_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthType {
    /// 0: no authentication step.
    None,
    /// 1: SASL.
    Sasl,
    /// 2: polkit.
    Polkit,
    /// Any other number (never one of the above when this crate produced it).
    Other(u32),
}

impl From<u32> for AuthType {
    fn from(n: u32) -> Self {
        match n {
            0 => Self::None,
            1 => Self::Sasl,
            2 => Self::Polkit,
            n => Self::Other(n),
        }
    }
}

impl From<AuthType> for u32 {
    fn from(t: AuthType) -> u32 {
        match t {
            AuthType::None => 0,
            AuthType::Sasl => 1,
            AuthType::Polkit => 2,
            AuthType::Other(n) => n,
        }
    }
}

impl<'a> Xdr<'a> for AuthType {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, (*self).into());
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.u32().map(Self::from)
    }
}

/// `remote_auth_list_ret`: the authentication types the server requires (libvirtd sends one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthListReply(pub Vec<AuthType>);

impl<'a> Xdr<'a> for AuthListReply {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.0.len() as u32);
        for t in &self.0 {
            t.encode(out);
        }
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        let count = r.u32()?;
        if count > REMOTE_AUTH_TYPE_LIST_MAX {
            return Err(XdrError::TooLong {
                len: count,
                max: REMOTE_AUTH_TYPE_LIST_MAX,
            });
        }
        (0..count)
            .map(|_| r.read())
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// `remote_connect_supports_feature_args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportsFeatureArgs {
    /// A `VIR_DRV_FEATURE_*` number, e.g. [`FEATURE_PROGRAM_KEEPALIVE`].
    pub feature: u32,
}

impl<'a> Xdr<'a> for SupportsFeatureArgs {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.feature);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.u32().map(|feature| Self { feature })
    }
}

/// An `int` libvirt's C code reads as a truth value: any non-zero value is true; encoded as 1/0.
fn read_int_bool(r: &mut Reader<'_>) -> Result<bool, XdrError> {
    r.i32().map(|v| v != 0)
}

fn put_int_bool(out: &mut Vec<u8>, v: bool) {
    put_i32(out, i32::from(v));
}

/// `remote_connect_supports_feature_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportsFeatureReply {
    /// Whether the server supports the feature (`int supported`, non-zero is true).
    pub supported: bool,
}

impl<'a> Xdr<'a> for SupportsFeatureReply {
    fn encode(&self, out: &mut Vec<u8>) {
        put_int_bool(out, self.supported);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        read_int_bool(r).map(|supported| Self { supported })
    }
}

/// `remote_auth_sasl_init_ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitReply {
    /// Comma-separated mechanism names, e.g. `"SCRAM-SHA-256"`.
    pub mechlist: String,
}

impl<'a> Xdr<'a> for SaslInitReply {
    fn encode(&self, out: &mut Vec<u8>) {
        self.mechlist.encode(out);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.read().map(|mechlist| Self { mechlist })
    }
}

/// SASL data on the wire: `int nil; char data<REMOTE_AUTH_SASL_DATA_MAX>`. `nil` (non-zero) is
/// NULL data, which differs from empty data; the array is still there (libvirt sends it empty
/// and ignores it).
fn read_sasl_data(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, XdrError> {
    let nil = read_int_bool(r)?;
    let data = r.char_array(REMOTE_AUTH_SASL_DATA_MAX)?;
    Ok((!nil).then_some(data))
}

fn put_sasl_data(out: &mut Vec<u8>, data: Option<&[u8]>) {
    put_int_bool(out, data.is_none());
    put_char_array(out, data.unwrap_or_default());
}

/// `remote_auth_sasl_start_args`: the client's first SASL message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslStartArgs {
    /// The chosen mechanism, e.g. `"SCRAM-SHA-256"`.
    pub mech: String,
    /// The initial response; `None` for server-first mechanisms.
    pub data: Option<Vec<u8>>,
}

impl<'a> Xdr<'a> for SaslStartArgs {
    fn encode(&self, out: &mut Vec<u8>) {
        self.mech.encode(out);
        put_sasl_data(out, self.data.as_deref());
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            mech: r.read()?,
            data: read_sasl_data(r)?,
        })
    }
}

/// `remote_auth_sasl_start_ret` and `remote_auth_sasl_step_ret`, which libvirt declares
/// alike: the server's answer to a SASL message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslReply {
    /// The server considers the exchange finished.
    pub complete: bool,
    /// The server's challenge, next message or final message.
    pub data: Option<Vec<u8>>,
}

/// `remote_auth_sasl_start_ret`.
pub type SaslStartReply = SaslReply;
/// `remote_auth_sasl_step_ret`.
pub type SaslStepReply = SaslReply;

impl<'a> Xdr<'a> for SaslReply {
    fn encode(&self, out: &mut Vec<u8>) {
        put_int_bool(out, self.complete);
        put_sasl_data(out, self.data.as_deref());
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        Ok(Self {
            complete: read_int_bool(r)?,
            data: read_sasl_data(r)?,
        })
    }
}

/// `remote_auth_sasl_step_args`: the client's next SASL message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslStepArgs {
    /// The client's response.
    pub data: Option<Vec<u8>>,
}

impl<'a> Xdr<'a> for SaslStepArgs {
    fn encode(&self, out: &mut Vec<u8>) {
        put_sasl_data(out, self.data.as_deref());
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        read_sasl_data(r).map(|data| Self { data })
    }
}

/// `remote_auth_polkit_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolkitReply {
    /// polkit authorised the client.
    pub complete: bool,
}

impl<'a> Xdr<'a> for PolkitReply {
    fn encode(&self, out: &mut Vec<u8>) {
        put_int_bool(out, self.complete);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        read_int_bool(r).map(|complete| Self { complete })
    }
}

/// `remote_connect_get_lib_version_ret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLibVersionReply {
    /// `major * 1_000_000 + minor * 1000 + release`.
    pub lib_ver: u64,
}

impl<'a> Xdr<'a> for GetLibVersionReply {
    fn encode(&self, out: &mut Vec<u8>) {
        self.lib_ver.encode(out);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.u64().map(|lib_ver| Self { lib_ver })
    }
}

/// `remote_connect_get_hostname_ret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetHostnameReply {
    /// The host's name.
    pub hostname: String,
}

impl<'a> Xdr<'a> for GetHostnameReply {
    fn encode(&self, out: &mut Vec<u8>) {
        self.hostname.encode(out);
    }
    fn decode(r: &mut Reader<'a>) -> Result<Self, XdrError> {
        r.read().map(|hostname| Self { hostname })
    }
}

#[cfg(test)]
mod tests;
