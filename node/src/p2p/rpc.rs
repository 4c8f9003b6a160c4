//! Request-response codec: one request or response per stream, written whole and ended
//! by closing the stream; read with a size limit and decoded by `pyagent_protocol::codec`,
//! so a malformed or oversized message fails that one stream and nothing else.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use pyagent_protocol::rpc::{MAX_RPC_BYTES, RpcRequest, RpcResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The codec of `/pyagent/rpc/1`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcCodec;

async fn read_frame<M: DeserializeOwned, T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<M> {
    let mut buf = Vec::new();
    io.take(MAX_RPC_BYTES as u64 + 1).read_to_end(&mut buf).await?;
    pyagent_protocol::decode(&buf, MAX_RPC_BYTES).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<M: Serialize, T: AsyncWrite + Unpin + Send>(io: &mut T, message: &M) -> io::Result<()> {
    let bytes = pyagent_protocol::encode(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = RpcRequest;
    type Response = RpcResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RpcRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RpcResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: RpcRequest) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: RpcResponse) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[tokio::test]
    async fn request_round_trips_and_garbage_is_invalid_data() {
        let proto = StreamProtocol::new(pyagent_protocol::rpc::RPC_PROTOCOL);
        let mut buf = futures::io::Cursor::new(Vec::new());
        RpcCodec.write_request(&proto, &mut buf, RpcRequest::Hello).await.unwrap();
        let mut rd = futures::io::Cursor::new(buf.into_inner());
        assert_eq!(RpcCodec.read_request(&proto, &mut rd).await.unwrap(), RpcRequest::Hello);

        let mut garbage = futures::io::Cursor::new(vec![1u8, 200, 200, 200]);
        let err = RpcCodec.read_request(&proto, &mut garbage).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut huge = futures::io::Cursor::new(vec![1u8; MAX_RPC_BYTES + 10]);
        let err = RpcCodec.read_response(&proto, &mut huge).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
