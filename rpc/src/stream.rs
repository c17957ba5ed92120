//! Whole packets on an async byte stream (feature `tokio`), in the style of mini-redis's
//! `Connection::read_frame` / `write_frame`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::packet::{declared_len, FrameError};

/// Most bytes asked of the stream per read (`VIR_NET_MESSAGE_INITIAL`). The buffer holds at most
/// this much beyond what has arrived (its capacity at most twice that, by `Vec`'s doubling),
/// whatever length a packet declares.
const READ_CHUNK: usize = 64 * 1024;

/// Buffer capacity kept between packets; a larger buffer (after a large packet) is shrunk back.
const KEEP_CAPACITY: usize = 4 * READ_CHUNK;

/// Why [`PacketStream::read_packet`] returned no packet.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("reading a packet failed: {0}")]
    Io(#[from] std::io::Error),
    /// The length word is outside libvirt's limits.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The packet is legal for libvirt but larger than the caller allows.
    #[error("a packet of {len} bytes exceeds the {max} allowed here")]
    TooLarge {
        /// Its declared length.
        len: u32,
        /// The caller's limit.
        max: u32,
    },
    /// The stream ended in the middle of a packet.
    #[error("the stream ended after {got} of the {want} bytes of a packet")]
    Truncated {
        /// Bytes of the packet received.
        got: usize,
        /// Bytes expected: 4 while the length word is incomplete, then the declared length.
        want: usize,
    },
}

impl ReadError {
    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io(_) => "io_error",
            Self::Frame(f) => f.reason(),
            Self::TooLarge { .. } => "too_large",
            Self::Truncated { .. } => "truncated",
        }
    }
}

/// A byte stream read and written one whole packet at a time.
///
/// Reads never go past the end of the packet being read, so [`into_inner`](Self::into_inner)
/// after a complete packet hands over a stream positioned at the next one.
#[derive(Debug)]
pub struct PacketStream<S> {
    io: S,
    /// `buf[..filled]` is the packet read so far; `buf[filled..]` is scratch space.
    buf: Vec<u8>,
    filled: usize,
    /// The last call returned the packet in `buf`; the next one starts afresh.
    returned: bool,
}

impl<S> PacketStream<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
            filled: 0,
            returned: false,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The stream, e.g. to write a raw byte; reading from it directly mid-packet breaks framing.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The stream. Bytes of a partly read packet (after a cancelled or failed
    /// [`read_packet`](Self::read_packet)) are lost.
    pub fn into_inner(self) -> S {
        self.io
    }
}

/// An end of stream: `read` returned 0, or TLS reported the peer closed without close_notify
/// (libvirt clients just close the socket).
fn is_eof(result: &std::io::Result<usize>) -> bool {
    match result {
        Ok(n) => *n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
    }
}

impl<S: AsyncRead + Unpin> PacketStream<S> {
    /// Reads one whole packet of at most `max` bytes (validated length word, header, payload).
    ///
    /// `Ok(None)` means the stream ended cleanly before the first byte of a packet. The buffer
    /// grows only as bytes arrive, so a length word claiming 32 MiB costs nothing until the bytes
    /// come. Cancel-safe: if the future is dropped, the bytes read so far are kept for the next
    /// call.
    pub async fn read_packet(&mut self, max: u32) -> Result<Option<&[u8]>, ReadError> {
        if self.returned {
            self.returned = false;
            self.filled = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        while self.filled < 4 {
            if !self.fill(4).await? {
                return match self.filled {
                    0 => Ok(None),
                    got => Err(ReadError::Truncated { got, want: 4 }),
                };
            }
        }
        let len = declared_len(&self.buf[..4]).ok_or(ReadError::Truncated {
            got: self.filled,
            want: 4,
        })??;
        if len > max {
            return Err(ReadError::TooLarge { len, max });
        }
        let want = len as usize;
        while self.filled < want {
            if !self.fill(want).await? {
                return Err(ReadError::Truncated {
                    got: self.filled,
                    want,
                });
            }
        }
        self.returned = true;
        Ok(Some(&self.buf[..want]))
    }

    /// One read towards `target` bytes in all; false at end of stream.
    async fn fill(&mut self, target: usize) -> Result<bool, ReadError> {
        let end = target.min(self.filled + READ_CHUNK);
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        loop {
            let result = self.io.read(&mut self.buf[self.filled..end]).await;
            if is_eof(&result) {
                return Ok(false);
            }
            match result {
                Ok(n) => {
                    self.filled += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> PacketStream<S> {
    /// Writes one packet (or any bytes) and flushes it.
    pub async fn write_packet(&mut self, packet: &[u8]) -> std::io::Result<()> {
        self.io.write_all(packet).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests;
