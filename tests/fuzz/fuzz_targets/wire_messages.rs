//! Every peer-to-peer message decoder (gossip: adverts, tasks, votes; request-response;
//! history entries, stored and on the wire, and the history protocol; inference stream
//! requests and frames; KV block requests and frame headers): arbitrary bytes never
//! panic, and whatever decodes is validated and survives a round trip (encode, decode: the same value). The codec's
//! varints accept non-minimal forms, so equal values need not come from equal bytes; ids
//! are always hashed over the re-encoded value, never over received bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyagent_protocol::codec::MAX_FRAME_BYTES;
use pyagent_protocol::history::{Entry, HistoryRequest, HistoryResponse};
use pyagent_protocol::inference::{InferFrame, InferRequest, MAX_FRAME_BYTES as MAX_INFER_FRAME, MAX_REQUEST_BYTES};
use pyagent_protocol::rpc::{BlobsResponse, GetBlobs, HelloResponse, ResultAck, TaskResult};
use pyagent_protocol::task::TaskMessage;
use pyagent_protocol::vote::VoteMessage;
use pyagent_protocol::{Advert, decode, encode};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let value: T = decode(data, MAX_FRAME_BYTES).ok()?;
    let bytes = encode(&value).expect("a decoded value encodes");
    assert!(bytes.len() <= data.len(), "re-encoding never grows a frame");
    let again: T = decode(&bytes, MAX_FRAME_BYTES).expect("an encoded value decodes");
    assert_eq!(again, value, "encode then decode gives the same value");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    if let Some(advert) = round_trip::<Advert>(data) {
        let _ = advert.validate("12D3KooWfuzz");
    }
    if let Some(message) = round_trip::<TaskMessage>(data) {
        let _ = message.validate("12D3KooWfuzz");
    }
    if let Some(message) = round_trip::<VoteMessage>(data) {
        let _ = message.validate("12D3KooWfuzz");
    }
    let _ = round_trip::<GetBlobs>(data);
    let _ = round_trip::<TaskResult>(data);
    let _ = round_trip::<HelloResponse>(data);
    let _ = round_trip::<BlobsResponse>(data);
    let _ = round_trip::<ResultAck>(data);
    if let Some(entry) = round_trip::<Entry>(data) {
        let _ = entry.validate();
    }
    if let Some(request) = round_trip::<HistoryRequest>(data) {
        let _ = request.validate();
    }
    let _ = round_trip::<HistoryResponse>(data);
    // Inference streams: floats may be NaN (never equal to themselves), so a request is
    // compared only once validated (which refuses NaN), and frames are re-encoded only.
    if let Ok(request) = decode::<InferRequest>(data, MAX_REQUEST_BYTES)
        && request.validate().is_ok()
    {
        let again: InferRequest = decode(&encode(&request).expect("encodes"), MAX_REQUEST_BYTES).expect("decodes");
        assert_eq!(again, request);
    }
    if let Ok(frame) = decode::<InferFrame>(data, MAX_INFER_FRAME) {
        let bytes = encode(&frame).expect("a decoded frame encodes");
        assert!(bytes.len() <= data.len());
    }
    // KV block streams: the request, and an answer frame's header.
    if let Some(request) = round_trip::<pyagent_protocol::kv::KvRequest>(data) {
        let _ = request.validate();
    }
    if let Some(header) = data.first_chunk::<{ pyagent_protocol::kv::KV_FRAME_HEADER }>() {
        if let Ok((_, len)) = pyagent_protocol::kv::parse_header(*header, 1 << 20) {
            assert!(len <= 1 << 20);
        }
    }
});
