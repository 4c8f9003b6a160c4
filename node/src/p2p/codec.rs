//! The request-response codec of every protocol in `pyagent_protocol::rpc`: one request
//! or response per stream, written whole and ended by closing the stream; read with the
//! protocol's own size limit (checked before decoding) and decoded by
//! `pyagent_protocol::codec`, so a malformed or oversized message fails that one stream
//! and nothing else.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use pyagent_protocol::rpc::RequestResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The codec of protocol `P`.
pub struct FrameCodec<P>(PhantomData<P>);

impl<P> Default for FrameCodec<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<P> Clone for FrameCodec<P> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<P> std::fmt::Debug for FrameCodec<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameCodec")
    }
}

async fn read_frame<M: DeserializeOwned, T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<M> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    pyagent_protocol::decode(&buf, limit).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<M: Serialize, T: AsyncWrite + Unpin + Send>(io: &mut T, message: &M, limit: usize) -> io::Result<()> {
    let bytes = pyagent_protocol::encode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if bytes.len() > limit {
        // The peer would refuse it anyway: fail here, with the reason.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("message of {} bytes over the protocol's limit of {limit}", bytes.len())));
    }
    io.write_all(&bytes).await?;
    io.close().await
}

impl<P: RequestResponse> libp2p::request_response::Codec for FrameCodec<P> {
    type Protocol = StreamProtocol;
    type Request = P::Request;
    type Response = P::Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, P::MAX_REQUEST_BYTES).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, P::MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: P::Request) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, P::MAX_REQUEST_BYTES).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: P::Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, P::MAX_RESPONSE_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;
    use pyagent_protocol::rpc::{Blobs, GetBlobs, Hello, HelloRequest};
    use pyagent_protocol::task::BlobId;

    #[tokio::test]
    async fn requests_round_trip_and_garbage_or_oversize_is_invalid_data() {
        let proto = StreamProtocol::new(Hello::NAME);
        let mut hello = FrameCodec::<Hello>::default();
        let mut buf = futures::io::Cursor::new(Vec::new());
        hello.write_request(&proto, &mut buf, HelloRequest).await.unwrap();
        let mut rd = futures::io::Cursor::new(buf.into_inner());
        assert_eq!(hello.read_request(&proto, &mut rd).await.unwrap(), HelloRequest);

        let mut garbage = futures::io::Cursor::new(vec![pyagent_protocol::codec::CODEC_VERSION, 200, 200, 200]);
        let err = FrameCodec::<Blobs>::default().read_request(&proto, &mut garbage).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // Each protocol has its own limit: a hello request of 65 bytes is refused unread.
        let mut big = futures::io::Cursor::new(vec![1u8; Hello::MAX_REQUEST_BYTES + 1]);
        let err = hello.read_request(&proto, &mut big).await.unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        // Writing over the limit fails before anything is sent.
        let too_many = GetBlobs { ids: vec![BlobId([0; 32]); Blobs::MAX_REQUEST_BYTES / 32] };
        let mut out = futures::io::Cursor::new(Vec::new());
        let err = FrameCodec::<Blobs>::default().write_request(&proto, &mut out, too_many).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(out.into_inner().is_empty());
    }
}
