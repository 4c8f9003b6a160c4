//! Length-prefixed frames on an inference stream: a 4-byte big-endian length, then a
//! `pyagent_protocol::codec` frame. The length is checked against the limit before
//! anything is allocated.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes, limit {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("undecodable frame: {0}")]
    Codec(#[from] pyagent_protocol::CodecError),
}

pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> Result<(), FrameError> {
    let body = pyagent_protocol::encode(value)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { size: body.len(), limit: u32::MAX as usize })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// The next frame, or `None` when the stream ended cleanly before one began.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R, limit: usize) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()) };
        }
        got += n;
    }
    let size = u32::from_be_bytes(len) as usize;
    if size > limit {
        return Err(FrameError::TooLarge { size, limit });
    }
    let mut body = vec![0u8; size];
    r.read_exact(&mut body).await?;
    Ok(Some(pyagent_protocol::decode(&body, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_hostile_lengths_are_refused_before_allocation() {
        let mut buf = Vec::new();
        write(&mut buf, &"hello".to_owned()).await.unwrap();
        write(&mut buf, &7u32).await.unwrap();
        let mut r = futures::io::Cursor::new(buf.clone());
        assert_eq!(read::<_, String>(&mut r, 1024).await.unwrap().as_deref(), Some("hello"));
        assert_eq!(read::<_, u32>(&mut r, 1024).await.unwrap(), Some(7));
        assert!(read::<_, u32>(&mut r, 1024).await.unwrap().is_none(), "clean end");
        // 4 GiB announced: refused at once.
        let mut r = futures::io::Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert!(matches!(read::<_, String>(&mut r, 1024).await, Err(FrameError::TooLarge { .. })));
        // Cut inside the length or the body.
        let mut r = futures::io::Cursor::new(vec![0, 0]);
        assert!(matches!(read::<_, String>(&mut r, 1024).await, Err(FrameError::Io(_))));
        let mut r = futures::io::Cursor::new(buf[..buf.len() - 3].to_vec());
        let _ = read::<_, String>(&mut r, 1024).await.unwrap();
        assert!(matches!(read::<_, u32>(&mut r, 1024).await, Err(FrameError::Io(_))));
        // Garbage body.
        let mut r = futures::io::Cursor::new(vec![0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(read::<_, String>(&mut r, 1024).await, Err(FrameError::Codec(_))));
    }
}
